"""Upload decoding for speech recognition: formats, limits and bad input."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from audio.ffmpeg import FFmpegTimeout, run_ffmpeg
from audio.formats import (
    ASR_SAMPLE_RATE,
    AudioInputError,
    AudioLimits,
    decode_upload,
    from_pcm16,
    to_pcm16,
    upload_to_flac,
)
from tests.fakes.audio_files import FORMATS, encode, speechlike

LIMITS = AudioLimits(max_bytes=2 * 1024 * 1024, max_seconds=5.0)


def test_pcm16_encoding_scales_by_32768_rounds_and_clips() -> None:
    steps = np.array([0.0, 0.5, -0.5, -1.0, 1.0, 2.0, -2.0, 1.4, 1.6, -1.6], np.float32)
    steps[-3:] /= 32768
    pcm = to_pcm16(steps)
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.tolist() == [0, 16384, -16384, -32768, 32767, 32767, -32768, 1, 2, -2]


def test_pcm16_round_trip_is_within_half_a_step_and_exact_for_every_16_bit_value() -> None:
    samples = np.random.default_rng(0).uniform(-1.0, 32767 / 32768, 100_000).astype(np.float32)
    back = from_pcm16(to_pcm16(samples).tobytes())
    assert back.dtype == np.float32
    assert float(np.max(np.abs(back - samples))) <= 0.5 / 32768
    every = np.arange(-32768, 32768).astype(np.int16)
    assert np.array_equal(from_pcm16(every), every / 32768)
    assert np.array_equal(to_pcm16(from_pcm16(every)), every)


def test_pcm16_decoding_ignores_an_odd_trailing_byte_and_refuses_other_sample_types() -> None:
    assert from_pcm16(b"\x00\x40\x00\xc0\x7f").tolist() == [0.5, -0.5]
    assert from_pcm16(b"\x7f").size == 0
    with pytest.raises(TypeError, match="int16"):
        from_pcm16(np.zeros(4, np.int32))


@pytest.mark.parametrize("ext", sorted(FORMATS))
async def test_every_upload_format_decodes_to_16k_mono(ffmpeg: str, ext: str) -> None:
    source = speechlike(2.0)
    samples = await decode_upload(encode(source, ext, ffmpeg), LIMITS, ffmpeg)
    assert samples.dtype == np.float32
    # encoders add priming/padding; the duration must still be right to within 0.1 s
    assert abs(samples.size / ASR_SAMPLE_RATE - 2.0) < 0.1
    assert 0.1 < float(np.max(np.abs(samples))) <= 1.0


async def test_flac_output_is_16k_mono_flac(ffmpeg: str) -> None:
    flac = await upload_to_flac(encode(speechlike(1.0), "ogg", ffmpeg), LIMITS, ffmpeg)
    assert flac[:4] == b"fLaC"
    probe = subprocess.run(
        [ffmpeg, "-hide_banner", "-i", "pipe:0", "-f", "null", "-"], input=flac, capture_output=True, check=True
    )
    assert b"16000 Hz, mono" in probe.stderr


async def test_decoded_audio_matches_the_source(ffmpeg: str) -> None:
    source = speechlike(1.0, sample_rate=ASR_SAMPLE_RATE)
    decoded = await decode_upload(encode(source, "wav", ffmpeg, ASR_SAMPLE_RATE), LIMITS, ffmpeg)
    assert decoded.size == source.size
    assert np.corrcoef(source, decoded)[0, 1] > 0.999


async def test_zero_byte_file(ffmpeg: str) -> None:
    with pytest.raises(AudioInputError, match="empty"):
        await decode_upload(b"", LIMITS, ffmpeg)


async def test_too_large_is_rejected_before_decoding(ffmpeg: str) -> None:
    with pytest.raises(AudioInputError, match="too large"):
        await decode_upload(b"\0" * (LIMITS.max_bytes + 1), LIMITS, "/nonexistent/ffmpeg-is-never-run")


async def test_too_long_stops_while_decoding(ffmpeg: str) -> None:
    data = encode(speechlike(12.0), "ogg", ffmpeg)
    assert len(data) < LIMITS.max_bytes
    with pytest.raises(AudioInputError, match="longer than 5 seconds"):
        await decode_upload(data, LIMITS, ffmpeg)


async def test_text_file_named_ogg(ffmpeg: str) -> None:
    with pytest.raises(AudioInputError, match="corrupt or isn't a sound recording"):
        await decode_upload(b"Should I adopt a dog? This is not audio.\n" * 20, LIMITS, ffmpeg)


async def test_truncated_ogg_keeps_what_was_recorded(ffmpeg: str) -> None:
    data = encode(speechlike(3.0), "ogg", ffmpeg)
    samples = await decode_upload(data[: len(data) // 2], LIMITS, ffmpeg)
    assert 0.8 < samples.size / ASR_SAMPLE_RATE < 2.2


async def test_truncated_to_the_header_is_an_error(ffmpeg: str) -> None:
    data = encode(speechlike(3.0), "ogg", ffmpeg)
    with pytest.raises(AudioInputError):
        await decode_upload(data[:200], LIMITS, ffmpeg)


async def test_silence(ffmpeg: str) -> None:
    with pytest.raises(AudioInputError, match="silent"):
        await decode_upload(encode(np.zeros(48_000, np.float32), "wav", ffmpeg), LIMITS, ffmpeg)


async def test_a_playlist_upload_cannot_read_another_file(ffmpeg: str) -> None:
    # Another member's question, lying in the shared temp directory where uploads used to be written.
    folder = Path(tempfile.gettempdir())
    secret = folder / f"question-{uuid.uuid4().hex}.wav"
    secret.write_bytes(encode(speechlike(1.0), "wav", ffmpeg))
    try:
        for playlist in (f"ffconcat version 1.0\nfile {secret.name}\n", f"ffconcat version 1.0\nfile {secret}\n"):
            with pytest.raises(AudioInputError, match="corrupt or isn't a sound recording"):
                await decode_upload(playlist.encode(), LIMITS, ffmpeg)
        m3u = f"#EXTM3U\n#EXTINF:1,\nfile://{secret}\n".encode()
        with pytest.raises(AudioInputError):
            await decode_upload(m3u, LIMITS, ffmpeg)
    finally:
        secret.unlink()


async def test_uploads_are_written_to_private_folders_that_are_removed(
    ffmpeg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: object, **kwargs: object) -> str:
        made.append(mkdtemp(*args, **kwargs))  # type: ignore[arg-type]
        assert os.stat(made[-1]).st_mode & 0o077 == 0  # no one else may read it
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    await decode_upload(encode(speechlike(1.0), "ogg", ffmpeg), LIMITS, ffmpeg)
    await decode_upload(encode(speechlike(1.0), "mp3", ffmpeg), LIMITS, ffmpeg)
    assert len(set(made)) == 2 and not any(os.path.exists(path) for path in made)


def test_every_ffmpeg_run_has_a_wall_clock_limit(ffmpeg: str) -> None:
    # A 30 s source read in real time (-re) runs far past the limit, which kills it.
    args = [ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-re", "-i", "sine=d=30", "-f", "s16le", "-"]
    with pytest.raises(FFmpegTimeout):
        run_ffmpeg(args, b"", timeout=0.5)
