"""Streaming Discord audio source: float32 chunks → one ffmpeg process per utterance → 20 ms frames.

Speech arrives in irregular chunks while the TTS model generates; discord.py's player thread wants one 20 ms
frame every 20 ms and ends playback on the first empty read. `StreamingSource` bridges the two: a writer thread
pipes the chunks into ffmpeg (soxr resampling to 48 kHz stereo, libopus in Ogg pages flushed per packet, or raw
s16le PCM), a reader thread turns ffmpeg's output into frames, and `read()` never blocks: it hands out a frame,
or a silence frame (counted as an underrun) while the producer is behind, or b"" once everything was played.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import selectors
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import discord
import ffmpeg as ffmpeg_python
import numpy as np

from audio.ffmpeg import GLOBAL_ARGS, FFmpegUnavailable, ffmpeg_exe

log = logging.getLogger(__name__)

DISCORD_RATE = 48_000
FRAME_SECONDS = 0.02
PCM_FRAME_BYTES = 3840  # 960 samples x 2 channels x 2 bytes
OPUS_SILENCE = b"\xf8\xff\xfe"
OPUS_BITRATE = "64k"
OPUS_COMPLEXITY = 6  # same quality as libopus' default 10 on speech here (20.5 dB SNR), about 25% less CPU
_READ_SIZE = 64 * 1024
_STDERR_TAIL = 2000
_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class PrerollPolicy:
    """How much audio to buffer before playback starts so that the rest arrives in time.

    With a producer delivering `rate` seconds of audio per second in chunks of at most `largest_chunk`
    seconds, starting with `P` seconds buffered never runs dry before the end of a `T`-second answer when
    `P >= T - rate * (T - largest_chunk)`: that is at most one chunk when the producer is faster than real
    time, and the whole answer when it is many times slower.
    """

    default_seconds: float = 6.0  # assumed answer length when the caller gives no estimate
    safety_seconds: float = 0.2  # ffmpeg's pipeline delay (about 100 ms) plus scheduling jitter

    def needed_seconds(
        self, *, produced: float, largest_chunk: float, rate: float, expected: float | None = None
    ) -> float:
        """Seconds of audio to have produced before starting, given what was measured so far.

        An unfinished producer is assumed to deliver at least one more chunk, so an estimate that turned out
        too short never starts a slow producer early.
        """
        total = max(self.default_seconds if expected is None else expected, produced + largest_chunk)
        lag = total - largest_chunk
        return max(total - rate * lag, 0.0) + self.safety_seconds


class ProducerMeter:
    """Measures the producer's speed in seconds of audio per wall-clock second (clock injected)."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._first: tuple[float, float] | None = None  # (arrival time, seconds) of the first chunk
        self.produced = 0.0
        self.largest_chunk = 0.0

    def observe(self, seconds: float, now: float) -> None:
        """Record a chunk of `seconds` of audio arriving at `now`."""
        if self._first is None:
            self._first = (now, seconds)
        self.produced += seconds
        self.largest_chunk = max(self.largest_chunk, seconds)

    def rate(self, now: float) -> float:
        """Speed so far: from the chunks after the first one (the first includes the producer's start-up),
        or from the start when only one chunk came; 0 before any chunk, infinite when no time passed."""
        if self._first is None:
            return 0.0
        first_at, first_seconds = self._first
        if self.produced > first_seconds:
            audio, elapsed = self.produced - first_seconds, now - first_at
        else:
            audio, elapsed = first_seconds, now - self._start
        return audio / elapsed if elapsed > 0 else math.inf


class OggOpusPackets:
    """Incremental Ogg demuxer for ffmpeg's single Opus stream: bytes in, Opus packets out (headers skipped)."""

    _HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._partial = bytearray()  # a packet continued on the next page

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the Opus packets completed by it."""
        self._buffer += data
        packets: list[bytes] = []
        while len(self._buffer) >= self._HEADER.size:
            capture, *_, segments = self._HEADER.unpack_from(self._buffer)
            if capture != b"OggS":
                raise ValueError("ffmpeg's output is not an Ogg stream")
            table_end = self._HEADER.size + segments
            if len(self._buffer) < table_end:
                break
            lacing = self._buffer[self._HEADER.size : table_end]
            if len(self._buffer) < table_end + sum(lacing):
                break
            offset = table_end
            for size in lacing:
                self._partial += self._buffer[offset : offset + size]
                offset += size
                if size < 255:
                    packet = bytes(self._partial)
                    self._partial.clear()
                    if not packet.startswith((b"OpusHead", b"OpusTags")):
                        packets.append(packet)
            del self._buffer[:offset]
        return packets

    def flush(self) -> list[bytes]:
        """End of stream: an incomplete page can only be a truncated one, so nothing more comes out."""
        return []


class PcmFrames:
    """Splits s16le 48 kHz stereo bytes into 20 ms frames; the last one is padded with silence."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the whole frames now available."""
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % PCM_FRAME_BYTES
        frames = [bytes(self._buffer[i : i + PCM_FRAME_BYTES]) for i in range(0, whole, PCM_FRAME_BYTES)]
        del self._buffer[:whole]
        return frames

    def flush(self) -> list[bytes]:
        """End of stream: the remainder, padded to a whole frame."""
        if not self._buffer:
            return []
        frame = bytes(self._buffer).ljust(PCM_FRAME_BYTES, b"\0")
        self._buffer.clear()
        return [frame]


def as_mono_f32(samples: np.ndarray) -> np.ndarray:
    """Validate mono samples and return them as little-endian float32, non-finite values replaced."""
    array = np.asarray(samples, dtype="<f4")
    if array.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {array.shape}")
    return array if np.isfinite(array).all() else np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=-1.0)


def resampled_stdin(sample_rate: int) -> ffmpeg_python.nodes.FilterableStream:
    """ffmpeg input: f32le mono at `sample_rate` on stdin, resampled to 48 kHz with soxr."""
    return ffmpeg_python.input("pipe:", format="f32le", ar=sample_rate, ac=1).filter(
        "aresample", DISCORD_RATE, resampler="soxr"
    )


def ffmpeg_args(exe: str, sample_rate: int, *, opus: bool) -> list[str]:
    """The ffmpeg command line: f32le mono on stdin → 48 kHz stereo Opus-in-Ogg (or s16le) on stdout."""
    stream = resampled_stdin(sample_rate)
    if opus:
        codec = {
            "format": "ogg",
            "acodec": "libopus",
            "b:a": OPUS_BITRATE,
            "compression_level": OPUS_COMPLEXITY,
            "frame_duration": 20,
            "page_duration": 20_000,  # one page per packet, or Ogg buffers about a second
        }
    else:
        codec = {"format": "s16le", "acodec": "pcm_s16le"}
    output = stream.output("pipe:", ac=2, flush_packets=1, **codec)
    return output.global_args(*GLOBAL_ARGS).compile(cmd=exe)


class StreamingSource(discord.AudioSource):
    """A discord.py audio source fed incrementally with float32 mono chunks at `sample_rate`.

    Lifecycle: construct (spawns ffmpeg), `feed()`/`afeed()` chunks, then `finish()` (or `fail()` /
    `cancel()`); start `vc.play()` once `ready()` resolves (reads before that return silence, not counted
    as underruns); discord.py calls `cleanup()` at the end (call it yourself if the source is never played).
    `end_reason` says why playback ended: "finished", "cancelled", "error: ..." or "ffmpeg died".
    `on_first_frame`, when set, is called (from the player's thread) as the first audio frame is handed out.
    """

    on_first_frame: Callable[[], object] | None = None
    _cleaned = True  # until ffmpeg and the threads exist, cleanup() (also run by __del__) has nothing to do

    def __init__(
        self,
        sample_rate: int,
        *,
        ffmpeg: str | None = None,
        opus: bool = True,
        preroll: PrerollPolicy | None = None,
        expected_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {sample_rate}")
        self.sample_rate = sample_rate
        self.underruns = 0
        self.frames_read = 0
        self.end_reason: str | None = None
        self._current_error: BaseException | None = None  # read by discord.py's player when playback ends
        self._opus = opus
        self._silence = OPUS_SILENCE if opus else bytes(PCM_FRAME_BYTES)
        self._framer = OggOpusPackets() if opus else PcmFrames()
        self._policy = preroll or PrerollPolicy()
        self._expected = expected_seconds
        self._clock = clock
        self._meter = ProducerMeter(clock())
        self._cond = threading.Condition()
        self._frames: deque[bytes] = deque()
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._finished = False  # the producer called finish()
        self._preroll_done = False
        self._ready = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        exe = ffmpeg or ffmpeg_exe()
        try:
            self._proc = subprocess.Popen(
                ffmpeg_args(exe, sample_rate, opus=opus),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise FFmpegUnavailable(f"The ffmpeg binary at {exe} cannot be started ({exc.strerror}).") from exc
        self._writer = threading.Thread(target=self._write_loop, name=f"ffmpeg-in-{self._proc.pid}", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"ffmpeg-out-{self._proc.pid}", daemon=True)
        self._cleaned = False
        self._writer.start()
        self._reader.start()

    # -- producer side -------------------------------------------------------------------------------------

    def feed(self, chunk: np.ndarray) -> None:
        """Queue a chunk of float32 mono samples (thread-safe, never blocks). Ignored once playback ended."""
        samples = as_mono_f32(chunk)
        with self._cond:
            if self._finished:
                raise RuntimeError("feed() after finish()")
            if self.end_reason is not None or not samples.size:
                return
            now = self._clock()
            self._meter.observe(samples.size / self.sample_rate, now)
            self._inbox.put(samples.tobytes())
            if not self._preroll_done:
                needed = self._policy.needed_seconds(
                    produced=self._meter.produced,
                    largest_chunk=self._meter.largest_chunk,
                    rate=self._meter.rate(now),
                    expected=self._expected,
                )
                self._preroll_done = self._meter.produced >= needed
            self._update_ready()

    async def afeed(self, chunk: np.ndarray) -> None:
        """`feed()` for coroutines: the chunk is handed to the writer thread, so the loop never blocks."""
        self.feed(chunk)

    def finish(self) -> None:
        """The producer is done: play what is buffered, then end with reason "finished"."""
        with self._cond:
            if self._finished or self.end_reason is not None:
                return
            self._finished = True
            self._preroll_done = True
            self._inbox.put(None)
            self._update_ready()

    def fail(self, exc: BaseException) -> None:
        """The producer failed: end playback now, recording the error."""
        log.warning("speech producer failed, ending playback: %r", exc)
        self._stop(f"error: {type(exc).__name__}: {exc}", exc)

    def cancel(self) -> None:
        """Stop now (e.g. /stop): `read()` returns b"" from its next call on."""
        self._stop("cancelled", None)

    # -- player side ---------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until pre-roll is satisfied or playback ended; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ready, timeout)

    async def ready(self) -> None:
        """Resolve when pre-roll is satisfied or playback ended (then start `vc.play`)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._ready:
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        await future

    def read(self) -> bytes:
        """One 20 ms frame; silence while pre-rolling or starved (an underrun); b"" once everything played."""
        with self._cond:
            if self._frames and self._ready:
                self.frames_read += 1
                if self.frames_read == 1 and self.on_first_frame is not None:
                    self.on_first_frame()
                return self._frames.popleft()
            if self.end_reason is not None and not self._frames:
                return b""
            if self._ready:
                self.underruns += 1
            return self._silence

    def is_opus(self) -> bool:
        """True in Opus mode: discord.py then sends the frames as they are (no libopus needed)."""
        return self._opus

    @property
    def buffered_frames(self) -> int:
        """Frames encoded and not yet read."""
        return len(self._frames)

    @property
    def ffmpeg_pid(self) -> int:
        """Process id of this utterance's ffmpeg."""
        return self._proc.pid

    @property
    def error(self) -> BaseException | None:
        """The producer's exception, or what went wrong with ffmpeg; None after a normal end or cancel."""
        return self._current_error

    def cleanup(self) -> None:
        """Kill and reap ffmpeg, join the threads and close the pipes (idempotent; cancels if still live)."""
        if self._cleaned:
            return
        self._cleaned = True
        self.cancel()
        for thread in (self._writer, self._reader):
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.error("thread %s did not stop within %.0f s", thread.name, _JOIN_TIMEOUT)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        log.log(
            logging.INFO if self.underruns else logging.DEBUG,
            "utterance ended (%s): %d frames, %d underruns",
            self.end_reason,
            self.frames_read,
            self.underruns,
        )

    # -- internals -----------------------------------------------------------------------------------------

    def _stop(self, reason: str, error: BaseException | None) -> None:
        with self._cond:
            # A "finished" utterance may still be playing its buffer: cancelling or failing it cuts that short.
            if self.end_reason is None or (self.end_reason == "finished" and self._frames):
                self.end_reason = reason
                self._current_error = error
            self._frames.clear()
            self._update_ready()
        self._inbox.put(None)  # wake the writer if it waits for a chunk
        self._proc.kill()  # no-op once reaped

    def _update_ready(self) -> None:
        """Mark the source ready and wake waiters, once pre-roll is done and a frame is there, or at the end.

        Call with the lock held.
        """
        if self._ready or not (self.end_reason is not None or (self._preroll_done and self._frames)):
            return
        self._ready = True
        self._cond.notify_all()
        for loop, future in self._waiters:
            with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    def _write_loop(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while (data := self._inbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except OSError:
            pass  # ffmpeg is gone; the reader reports why
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read_loop(self) -> None:
        proc = self._proc
        assert proc.stdout is not None and proc.stderr is not None
        stderr = bytearray()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                selector.register(proc.stderr, selectors.EVENT_READ)
                while selector.get_map():
                    for key, _ in selector.select():
                        data = os.read(key.fd, _READ_SIZE)
                        if not data:
                            selector.unregister(key.fileobj)
                        elif key.fileobj is proc.stderr:
                            stderr = (stderr + data)[-_STDERR_TAIL:]
                        else:
                            self._deliver(self._framer.feed(data))
            self._deliver(self._framer.flush())
        except Exception as exc:  # a corrupt stream or a broken pipe: nothing more will play
            self.fail(exc)
        returncode = proc.wait()
        with self._cond:
            if self.end_reason is None:
                if self._finished and returncode == 0:
                    self.end_reason = "finished"
                else:
                    self.end_reason = "ffmpeg died"
                    message = stderr.decode(errors="replace").strip()
                    self._current_error = RuntimeError(f"ffmpeg exited with code {returncode}: {message}")
                    log.warning("%s", self._current_error)
            self._update_ready()

    def _deliver(self, frames: list[bytes]) -> None:
        if not frames:
            return
        with self._cond:
            if self.end_reason is None:
                self._frames.extend(frames)
                self._update_ready()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
