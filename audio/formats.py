"""User uploads → 16 kHz mono audio for speech recognition, with size and duration limits.

Limits are enforced before decoding (bytes) and while decoding (seconds of decoded audio): a long file is
stopped as soon as it passes the limit, never read to the end first.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import threading
from dataclasses import dataclass

import ffmpeg as ffmpeg_python
import numpy as np

from audio.errors import UserFacingError

ASR_SAMPLE_RATE = 16_000
_BYTES_PER_SAMPLE = 2  # s16le
_READ_SIZE = 64 * 1024
SILENCE_PEAK = 1e-3  # below this peak amplitude (full scale 1.0) a recording counts as silent


class AudioInputError(UserFacingError):
    """An upload that cannot be used as a question (the sentence says why)."""


@dataclass(frozen=True)
class AudioLimits:
    """Upper bounds on what a user may upload."""

    max_bytes: int = 8 * 1024 * 1024
    max_seconds: float = 60.0


def check_size(size: int, limits: AudioLimits) -> None:
    """Reject empty or oversized uploads before anything is downloaded or decoded."""
    if size <= 0:
        raise AudioInputError("That file is empty: record or attach a question and try again.")
    if size > limits.max_bytes:
        raise AudioInputError(
            f"That file is too large ({size / 1_048_576:.1f} MiB); the limit is {limits.max_bytes / 1_048_576:.1f} MiB."
        )


def _too_long(limits: AudioLimits) -> AudioInputError:
    return AudioInputError(f"That recording is longer than {limits.max_seconds:g} seconds; please keep it shorter.")


def _run_ffmpeg_blocking(args: list[str], data: bytes, max_output: int | None) -> tuple[bytes, int]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ValueError), proc.stdin:  # type: ignore[union-attr]
            proc.stdin.write(data)  # type: ignore[union-attr]

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    out = bytearray()
    try:
        while chunk := proc.stdout.read1(_READ_SIZE):
            out += chunk
            if max_output is not None and len(out) > max_output:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        feeder.join()
    return bytes(out), code


async def _run_ffmpeg(args: list[str], data: bytes, max_output: int | None) -> tuple[bytes, int]:
    """Pipe `data` through ffmpeg off the event loop; stop early once output passes `max_output` bytes."""
    return await asyncio.to_thread(_run_ffmpeg_blocking, args, data, max_output)


async def decode_upload(data: bytes, limits: AudioLimits, ffmpeg: str) -> np.ndarray:
    """Decode any audio ffmpeg understands to float32 mono at 16 kHz.

    Raises `AudioInputError` for empty, oversized, overlong, corrupt, non-audio or silent input.
    """
    check_size(len(data), limits)
    max_output = int(limits.max_seconds * ASR_SAMPLE_RATE) * _BYTES_PER_SAMPLE
    # A file, not a pipe: MP4/M4A uploads often keep their index at the end, which needs seeking.
    with tempfile.NamedTemporaryFile(prefix="upload-") as upload:
        upload.write(data)
        upload.flush()
        args = (
            ffmpeg_python.input(upload.name)
            .output("pipe:1", format="s16le", acodec="pcm_s16le", ac=1, ar=ASR_SAMPLE_RATE)
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-vn")
            .compile(cmd=ffmpeg)
        )
        pcm, code = await _run_ffmpeg(args, b"", max_output)
    if len(pcm) > max_output:
        raise _too_long(limits)
    if code != 0 and not pcm:
        raise AudioInputError("I couldn't read that file as audio: it looks corrupt or isn't a sound recording.")
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    if samples.size < ASR_SAMPLE_RATE // 10:
        raise AudioInputError("That recording holds no audio I can hear.")
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioInputError("That recording is silent: nothing to answer.")
    return samples


async def encode_flac(samples: np.ndarray, ffmpeg: str, sample_rate: int = ASR_SAMPLE_RATE) -> bytes:
    """Encode float mono samples as a FLAC file (what Whisper endpoints accept everywhere)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    args = (
        ffmpeg_python.input("pipe:0", format="s16le", ac=1, ar=sample_rate)
        .output("pipe:1", format="flac")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .compile(cmd=ffmpeg)
    )
    flac, code = await _run_ffmpeg(args, pcm, None)
    if code != 0 or not flac:
        raise RuntimeError(f"ffmpeg failed to encode FLAC (exit status {code})")
    return flac


async def upload_to_flac(data: bytes, limits: AudioLimits, ffmpeg: str) -> bytes:
    """Check and convert a user upload to 16 kHz mono FLAC for speech recognition."""
    return await encode_flac(await decode_upload(data, limits, ffmpeg), ffmpeg)
