"""StreamingSource: pre-roll policy, frame pacing on a simulated 20 ms clock, round trips, endings, leaks."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from audio.ffmpeg import FFmpegUnavailable
from audio.source import (
    FRAME_SECONDS,
    OPUS_SILENCE,
    PCM_FRAME_BYTES,
    OggOpusPackets,
    PcmFrames,
    PrerollPolicy,
    ProducerMeter,
    StreamingSource,
)
from tests.audio.helpers import aligned_correlation, decode
from tests.fakes.audio_files import speechlike

pytestmark = pytest.mark.timeout(120)

RATE = 24_000  # the producer's rate in these tests (Parler's DAC runs at 44.1 kHz; any rate works)
PRE_SKIP = 312  # libopus' look-ahead at 48 kHz, as ffmpeg writes it in OpusHead


# -- helpers: an Ogg writer, ffmpeg decoding, correlation ---------------------------------------------------


def _ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, MSB first, no reflection, initial value 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_pages(packets: list[bytes], granules: list[int], *, seq: int, flags: int, max_segments: int) -> bytes:
    """Lay packets out on pages of at most `max_segments` lacing values (packets may span pages)."""
    segments: list[tuple[int, int | None]] = []  # lacing value, granule if a packet ends there
    for packet, granule in zip(packets, granules, strict=True):
        sizes = [255] * (len(packet) // 255) + [len(packet) % 255]
        segments += [(size, None) for size in sizes[:-1]] + [(sizes[-1], granule)]
    body = b"".join(packets)
    out, offset, continued = bytearray(), 0, False
    for start in range(0, len(segments), max_segments):
        page = segments[start : start + max_segments]
        ends = [granule for _, granule in page if granule is not None]
        size = sum(lacing for lacing, _ in page)
        header = struct.pack(
            "<4sBBqIIIB",
            b"OggS",
            0,
            flags | (1 if continued else 0),
            ends[-1] if ends else -1,
            1,
            seq,
            0,
            len(page),
        )
        raw = header + bytes(lacing for lacing, _ in page) + body[offset : offset + size]
        out += raw[:22] + struct.pack("<I", _ogg_crc(raw)) + raw[26:]
        offset, seq, flags, continued = offset + size, seq + 1, 0, page[-1][1] is None
    return bytes(out)


def ogg_opus(packets: list[bytes], *, max_segments: int = 255) -> bytes:
    """An Ogg Opus file (48 kHz stereo) holding `packets` of 20 ms each, headers on their own pages."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, PRE_SKIP, 48_000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 5) + b"tests" + struct.pack("<I", 0)
    granules = [960 * (i + 1) for i in range(len(packets))]
    return (
        _ogg_pages([head], [0], seq=0, flags=2, max_segments=max_segments)
        + _ogg_pages([tags], [0], seq=1, flags=0, max_segments=max_segments)
        + _ogg_pages(packets, granules, seq=2, flags=0, max_segments=max_segments)
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


# -- pre-roll policy and meter (pure) -----------------------------------------------------------------------


def test_meter_measures_speed_after_the_first_chunk() -> None:
    meter = ProducerMeter(start=10.0)
    assert meter.rate(10.5) == 0.0
    meter.observe(0.5, now=11.0)  # one chunk after 1 s of start-up: judged from the start
    assert meter.rate(11.0) == pytest.approx(0.5)
    meter.observe(0.5, now=11.25)
    meter.observe(1.0, now=11.75)  # 1.5 s of audio in the 0.75 s since the first chunk
    assert meter.rate(11.75) == pytest.approx(2.0)
    assert meter.produced == pytest.approx(2.0) and meter.largest_chunk == 1.0
    assert meter.rate(12.5) == pytest.approx(1.0)  # a stalled producer slows down
    assert ProducerMeter(start=0.0).rate(0.0) == 0.0
    instant = ProducerMeter(start=1.0)
    instant.observe(0.2, now=1.0)
    assert math.isinf(instant.rate(1.0))


def test_policy_needs_one_chunk_when_fast_and_the_whole_answer_when_very_slow() -> None:
    policy = PrerollPolicy(safety_seconds=0.0)
    fast = policy.needed_seconds(produced=0.5, largest_chunk=0.5, rate=1.5, expected=6.0)
    assert fast == 0.0
    # At real time, one chunk of slack: the next arrives exactly when the buffer runs dry.
    assert policy.needed_seconds(produced=0.5, largest_chunk=0.5, rate=1.0, expected=6.0) == pytest.approx(0.5)
    half = policy.needed_seconds(produced=0.5, largest_chunk=0.5, rate=0.5, expected=6.0)
    assert half == pytest.approx(6.0 - 0.5 * 5.5)
    # 25x slower than real time: everything but what arrives while the first 0.22 s play.
    assert policy.needed_seconds(produced=5.5, largest_chunk=0.5, rate=0.04, expected=6.0) > 5.5
    # An estimate that turned out too short: assume at least one more chunk, so a very slow producer waits.
    assert policy.needed_seconds(produced=8.0, largest_chunk=0.5, rate=0.04, expected=6.0) > 8.0
    assert PrerollPolicy(safety_seconds=0.2).needed_seconds(
        produced=0.5, largest_chunk=0.5, rate=1.5, expected=6.0
    ) == pytest.approx(0.2)
    assert PrerollPolicy(default_seconds=3.0).needed_seconds(
        produced=0.5, largest_chunk=0.5, rate=0.5
    ) < policy.needed_seconds(produced=0.5, largest_chunk=0.5, rate=0.5, expected=6.0)


def _ideal_start(policy: PrerollPolicy, arrivals: list[float], chunk: float, expected: float | None) -> float:
    """When a source using `policy` starts playing `arrivals` of `chunk` seconds (no ffmpeg delay)."""
    meter = ProducerMeter(start=0.0)
    for arrival in arrivals:
        meter.observe(chunk, now=arrival)
        needed = policy.needed_seconds(
            produced=meter.produced, largest_chunk=meter.largest_chunk, rate=meter.rate(arrival), expected=expected
        )
        if meter.produced >= needed:
            return arrival
    return arrivals[-1]  # finished


@pytest.mark.parametrize("speed", [0.04, 0.3, 0.7, 0.95, 1.0, 1.1, 3.0, 20.0])
@pytest.mark.parametrize("expected", [4.0, None])
def test_policy_start_never_runs_dry_for_steady_producers(speed: float, expected: float | None) -> None:
    chunk, total, latency = 0.25, 4.0, 0.4
    arrivals = [latency + (k + 1) * chunk / speed for k in range(int(total / chunk))]
    start = _ideal_start(PrerollPolicy(safety_seconds=0.0), arrivals, chunk, expected)
    for k, arrival in enumerate(arrivals):
        assert start + k * chunk >= arrival - 1e-9  # chunk k is there before playback needs it
    if speed >= 3.0:  # the first chunk's speed includes start-up, so the second one may be awaited
        assert start <= arrivals[1]
    if speed <= 0.04:
        assert start == arrivals[-1]


# -- framing ------------------------------------------------------------------------------------------------


def test_ogg_parser_reassembles_packets_across_pages_and_skips_headers() -> None:
    rng = np.random.default_rng(1)
    packets = [rng.bytes(size) for size in (3, 255, 510, 600, 1, 254, 2000, 77)]
    data = ogg_opus(packets, max_segments=3)  # forces packets across pages
    parser = OggOpusPackets()
    out = [packet for i in range(0, len(data), 37) for packet in parser.feed(data[i : i + 37])]
    assert out == packets
    assert parser.flush() == []
    with pytest.raises(ValueError, match="not an Ogg stream"):
        OggOpusPackets().feed(b"RIFF" + bytes(40))


def test_pcm_framer_pads_the_last_frame() -> None:
    framer = PcmFrames()
    assert framer.feed(b"\1" * 5000) == [b"\1" * PCM_FRAME_BYTES]
    assert framer.feed(b"\2" * 100) == []
    assert framer.flush() == [b"\1" * 1160 + b"\2" * 100 + bytes(2580)]
    assert framer.flush() == []


# -- playback on a simulated 20 ms clock --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoPreroll(PrerollPolicy):
    """Start as soon as the first frame exists, however slow the producer."""

    def needed_seconds(self, **_: float | None) -> float:
        return 0.0


@dataclass
class Playback:
    frames: list[bytes]  # audio frames, in order
    silences: int  # silence frames after playback started
    started_at: float  # simulated time of the first read
    reads_after_end: list[bytes]


def play(
    source: StreamingSource, clock: FakeClock, samples: np.ndarray, *, chunk: float, speed: float, latency: float
) -> Playback:
    """Producer and player on one simulated clock: chunk k arrives at latency + (k+1)·chunk/speed; once the
    source is ready the player reads one frame per 20 ms tick. After each arrival the test waits (in real
    time) until ffmpeg has encoded what it could, so results do not depend on this machine's speed."""
    size = int(chunk * RATE)
    pending = [
        (latency + (k + 1) * chunk / speed, samples[i : i + size]) for k, i in enumerate(range(0, len(samples), size))
    ]
    fed = 0
    frames: list[bytes] = []
    silences, started_at = 0, None
    while True:
        arrived = False
        while pending and pending[0][0] <= clock.now + 1e-9:
            source.feed(pending.pop(0)[1])
            fed, arrived = fed + size, True
        if arrived and not pending:
            source.finish()
            wait_until(lambda: source.end_reason is not None)
        elif arrived:
            settle(source, fed / RATE)
        if started_at is None and source.wait_ready(0):
            started_at = clock.now
        if started_at is not None:
            data = source.read()
            if not data:
                break
            if data == source._silence:
                silences += 1
            else:
                frames.append(data)
        clock.now += FRAME_SECONDS
    return Playback(frames, silences, started_at, [source.read() for _ in range(3)])


def settle(source: StreamingSource, fed_seconds: float) -> None:
    """Wait until ffmpeg caught up with `fed_seconds` (it holds back up to ~8 frames) and went quiet. The quiet
    window is long enough that a descheduled ffmpeg on a loaded machine is not taken for a finished one."""
    encoded = lambda: source.buffered_frames + source.frames_read  # noqa: E731
    wait_until(lambda: encoded() >= fed_seconds / FRAME_SECONDS - 10)
    last, quiet_since = encoded(), time.monotonic()
    while time.monotonic() - quiet_since < 0.25:
        time.sleep(0.003)
        if encoded() != last:
            last, quiet_since = encoded(), time.monotonic()


def _opus_frames(seconds: float) -> int:
    """Opus packets ffmpeg writes for `seconds` of audio: the encoder's look-ahead adds a partial frame."""
    return math.ceil((seconds * 48_000 + PRE_SKIP) / 960)


@pytest.mark.parametrize(
    ("speed", "latency", "opus"),
    [(3.0, 0.3, True), (1.0, 0.3, True), (1.0, 0.0, True), (0.5, 0.3, True), (1.0, 0.0, False)],
)
def test_preroll_plays_every_frame_without_underruns(speed: float, latency: float, opus: bool) -> None:
    """With no start-up latency the first chunk shows real-time speed exactly: only the safety margin
    (ffmpeg holds back about 100 ms) keeps playback from starting one chunk too early."""
    seconds = 3.0
    samples = speechlike(seconds, RATE)
    clock = FakeClock()
    source = StreamingSource(RATE, opus=opus, expected_seconds=seconds, clock=clock)
    try:
        result = play(source, clock, samples, chunk=0.24, speed=speed, latency=latency)  # on the 20 ms grid
    finally:
        source.cleanup()
    assert source.end_reason == "finished"
    assert result.silences == source.underruns == 0
    assert source.frames_read == len(result.frames)
    wanted = _opus_frames(seconds) if opus else round(seconds / FRAME_SECONDS)
    assert abs(len(result.frames) - wanted) <= 1
    assert result.reads_after_end == [b""] * 3
    if speed > 1.0:  # ready by the second chunk (the first one's speed includes the start-up)
        assert result.started_at <= latency + 2 * 0.24 / speed + FRAME_SECONDS


def test_slow_producer_without_preroll_counts_each_underrun() -> None:
    seconds, chunk, speed = 2.0, 0.2, 0.5
    samples = speechlike(seconds, RATE, seed=3)
    clock = FakeClock()
    source = StreamingSource(RATE, preroll=NoPreroll(), clock=clock)
    try:
        result = play(source, clock, samples, chunk=chunk, speed=speed, latency=0.1)
    finally:
        source.cleanup()
    assert source.underruns == result.silences
    assert abs(len(result.frames) - _opus_frames(seconds)) <= 1
    # Playback starts with the first chunk and then starves: the last chunk arrives (seconds - chunk)/speed
    # later and still has to play, so the player waited that long minus the audio it had.
    starved = ((seconds - chunk) / speed + chunk - seconds) / FRAME_SECONDS
    assert abs(source.underruns - starved) <= 8
    assert result.reads_after_end == [b""] * 3


def test_unknown_length_slow_producer_waits_for_the_whole_answer() -> None:
    samples = speechlike(2.0, RATE, seed=4)
    clock = FakeClock()
    source = StreamingSource(RATE, clock=clock)  # no estimate: the policy assumes a 6 s answer
    try:
        result = play(source, clock, samples, chunk=0.5, speed=0.2, latency=0.5)
    finally:
        source.cleanup()
    assert result.started_at == pytest.approx(0.5 + 2.0 / 0.2, abs=FRAME_SECONDS)
    assert source.underruns == 0 and abs(len(result.frames) - _opus_frames(2.0)) <= 1


# -- round trips through a decoder --------------------------------------------------------------------------


def _drain(source: StreamingSource) -> list[bytes]:
    assert source.wait_ready(10)
    wait_until(lambda: source.end_reason is not None)
    frames = []
    while data := source.read():
        frames.append(data)
    return frames


def _distinct(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio under a random 100 ms loudness pattern, so that two seeds correlate poorly."""
    pattern = np.random.default_rng(seed).uniform(0.1, 1.0, round(seconds * 10))
    return speechlike(seconds, RATE) * np.repeat(pattern, RATE // 10).astype(np.float32)


@pytest.mark.parametrize(("opus", "threshold"), [(True, 0.98), (False, 0.999)])
def test_decoded_output_matches_the_resampled_input(opus: bool, threshold: float, ffmpeg: str) -> None:
    samples = _distinct(2.0, seed=1)
    source = StreamingSource(RATE, opus=opus)
    try:
        for i in range(0, len(samples), 3001):  # odd chunk sizes
            source.feed(samples[i : i + 3001])
        source.finish()
        frames = _drain(source)
    finally:
        source.cleanup()
    if opus:
        decoded = decode(ogg_opus(frames), ffmpeg)
    else:
        assert {len(frame) for frame in frames} == {PCM_FRAME_BYTES}
        decoded = decode(b"".join(frames), ffmpeg, "-f", "s16le", "-ar", "48000", "-ac", "2")
    raw_input = ("-f", "f32le", "-ar", str(RATE), "-ac", "1")
    reference = decode(samples.tobytes(), ffmpeg, *raw_input)
    assert abs(len(decoded) - len(reference)) <= 960
    correlation, lag = aligned_correlation(decoded, reference)
    assert correlation > threshold and abs(lag) < 48  # same sound, in time within 1 ms
    other, _ = aligned_correlation(decoded, decode(_distinct(2.0, seed=2).tobytes(), ffmpeg, *raw_input))
    assert other < 0.9  # the comparison tells different audio apart


# -- endings ------------------------------------------------------------------------------------------------


def _feed_then_read(source: StreamingSource, seconds: float) -> int:
    """Feed `seconds` of audio, wait until it is encoded and read a few frames; returns frames read."""
    source.feed(speechlike(seconds, RATE))
    assert source.wait_ready(10)
    wait_until(lambda: source.buffered_frames > 10)
    return sum(1 for _ in range(5) if source.read() != OPUS_SILENCE)


def _assert_reaped(source: StreamingSource) -> None:
    assert source._proc.returncode is not None
    assert not source._writer.is_alive() and not source._reader.is_alive()


def test_cancel_mid_stream_ends_reads_at_once_and_kills_ffmpeg() -> None:
    source = StreamingSource(RATE, preroll=NoPreroll())
    try:
        assert _feed_then_read(source, 1.0) == 5
        source.cancel()
        assert source.read() == b""
        assert source.end_reason == "cancelled" and source.error is None
        source.feed(speechlike(0.2, RATE))  # a late chunk from the producer is dropped
        source.finish()
        assert source.read() == b""
    finally:
        source.cleanup()
    _assert_reaped(source)
    assert source._proc.returncode < 0  # killed


def test_cancel_after_the_producer_finished_drops_the_buffer() -> None:
    source = StreamingSource(RATE, preroll=NoPreroll())
    try:
        source.feed(speechlike(1.0, RATE))
        source.finish()
        wait_until(lambda: source.end_reason == "finished")
        assert source.buffered_frames > 10 and source.read() != b""
        source.cancel()
        assert source.read() == b"" and source.buffered_frames == 0
        assert source.end_reason == "cancelled"
    finally:
        source.cleanup()
    _assert_reaped(source)


def test_ffmpeg_killed_mid_stream_ends_after_what_it_encoded() -> None:
    source = StreamingSource(RATE, preroll=NoPreroll())
    try:
        _feed_then_read(source, 1.0)
        os.kill(source.ffmpeg_pid, 9)
        wait_until(lambda: source.end_reason is not None)
        reads = [source.read() for _ in range(200)]
        assert b"" in reads and not any(reads[reads.index(b"") :])
        assert all(reads[: reads.index(b"")])  # what was encoded plays out first, no empty read
        assert source.end_reason == "ffmpeg died"
        assert "code -9" in str(source.error)
        source.feed(speechlike(0.2, RATE))  # the producer does not notice: ignored
    finally:
        source.cleanup()
    _assert_reaped(source)


def test_producer_error_ends_playback_with_the_reason() -> None:
    source = StreamingSource(RATE, preroll=NoPreroll())
    failure = RuntimeError("model exploded")

    def producer() -> None:
        try:
            source.feed(speechlike(0.5, RATE))
            raise failure
        except RuntimeError as exc:
            source.fail(exc)

    try:
        thread = threading.Thread(target=producer)
        thread.start()
        thread.join(10)
        assert source.wait_ready(1)
        assert source.read() == b""
        assert source.end_reason == "error: RuntimeError: model exploded"
        assert source.error is failure and source._current_error is failure  # discord.py's after() sees it
    finally:
        source.cleanup()
    _assert_reaped(source)


def test_cleanup_of_a_live_source_cancels_it() -> None:
    source = StreamingSource(RATE)
    source.feed(speechlike(0.3, RATE))
    source.cleanup()
    source.cleanup()
    assert source.end_reason == "cancelled" and source.read() == b""
    _assert_reaped(source)


def test_bad_input_and_missing_binary_are_reported(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(FFmpegUnavailable, match="cannot be started"):
        StreamingSource(RATE, ffmpeg=os.path.join(tmp_path, "no-ffmpeg"))
    with pytest.raises(ValueError, match="positive"):
        StreamingSource(0)
    source = StreamingSource(RATE)
    try:
        with pytest.raises(ValueError, match="mono"):
            source.feed(np.zeros((2, 100), np.float32))
        source.feed(np.array([np.nan, np.inf, 0.5] * 2000))  # non-finite values are replaced, not sent
        source.finish()
        with pytest.raises(RuntimeError, match="after finish"):
            source.feed(np.zeros(10, np.float32))
        assert len(_drain(source)) == _opus_frames(0.25)
    finally:
        source.cleanup()


# -- asyncio ------------------------------------------------------------------------------------------------


async def test_asyncio_producer_and_ready() -> None:
    source = StreamingSource(RATE, expected_seconds=1.0)
    samples = speechlike(1.0, RATE)
    try:
        waiter = asyncio.create_task(source.ready())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing fed yet
        for i in range(0, len(samples), 4800):
            await source.afeed(samples[i : i + 4800])  # 0.2 s per call, far faster than real time
        await asyncio.wait_for(waiter, 10)
        source.finish()
        await asyncio.wait_for(source.ready(), 1)  # already ready: returns at once
        frames = await asyncio.to_thread(_drain, source)
    finally:
        source.cleanup()
    assert abs(len(frames) - _opus_frames(1.0)) <= 1 and source.underruns == 0


async def test_ready_resolves_when_cancelled_before_any_audio() -> None:
    source = StreamingSource(RATE)
    try:
        waiter = asyncio.create_task(source.ready())
        await asyncio.sleep(0.01)
        source.cancel()
        await asyncio.wait_for(waiter, 5)
        assert source.read() == b""
    finally:
        source.cleanup()


# -- leaks --------------------------------------------------------------------------------------------------


def _children() -> list[int]:
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(pid))
    return found


def _pipe_ends(source: StreamingSource) -> dict[int, str]:
    """The source's pipes to ffmpeg: fd → what it points at (`pipe:[inode]`)."""
    proc = source._proc
    fds = [stream.fileno() for stream in (proc.stdin, proc.stdout, proc.stderr) if stream is not None]
    return {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds}


def _still_open(ends: dict[int, str]) -> list[int]:
    """Which of these fds still point at the same pipe (a closed fd may be reused for something else)."""
    open_now = []
    for fd, target in ends.items():
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                open_now.append(fd)
        except OSError:
            continue
    return open_now


@pytest.mark.timeout(240)
def test_two_hundred_utterances_leave_nothing_behind() -> None:
    # Only what the sources own is counted: their ffmpeg children, their named threads and their pipes (other
    # libraries' threads and files in this process come and go on their own).
    chunk = speechlike(0.1, RATE)
    endings, leaked_fds = [], []
    for i in range(200):
        source = StreamingSource(RATE, opus=i % 4 != 3)
        ends = _pipe_ends(source)
        source.feed(chunk)
        if i % 5 == 4:
            source.cancel()  # some end early, one kind at a time
        elif i % 7 == 6:
            source.fail(ValueError("boom"))
        else:
            source.finish()
            _drain(source)
        source.cleanup()
        endings.append(source.end_reason)
        leaked_fds += _still_open(ends)
    assert set(endings) == {"finished", "cancelled", "error: ValueError: boom"}
    assert _children() == []
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("ffmpeg-")]
    assert leaked_fds == []
