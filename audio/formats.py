"""User uploads → 16 kHz mono audio for speech recognition, with size and duration limits.

Limits are enforced before decoding (bytes) and while decoding (seconds of decoded audio): a long file is
stopped as soon as it passes the limit, never read to the end first.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_python
import numpy as np

from audio.errors import UserFacingError
from audio.ffmpeg import GLOBAL_ARGS, FFmpegTimeout, run_ffmpeg, run_upload_work

ASR_SAMPLE_RATE = 16_000
_BYTES_PER_SAMPLE = 2  # s16le
# The containers people post as recordings; anything else (playlists, concat scripts, images…) is refused, and
# only local files and pipes may be opened, so an upload can never make ffmpeg read another file or a URL.
INPUT_FORMATS = "ogg,mp3,wav,flac,mov,mp4,m4a,matroska,webm,aac"
INPUT_PROTOCOLS = "file,pipe"
PCM16_SCALE = 32768.0  # 16-bit PCM full scale: float 1.0 ↔ 32768 steps (clipped to 32767)
SILENCE_PEAK = 1e-3  # below this peak amplitude (full scale 1.0) a recording counts as silent


class AudioInputError(UserFacingError):
    """An upload that cannot be used as a question (the sentence says why)."""


@dataclass(frozen=True)
class AudioLimits:
    """Upper bounds on what a user may upload."""

    max_bytes: int = 8 * 1024 * 1024
    max_seconds: float = 60.0


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (full scale ±1.0) as little-endian 16-bit PCM: scaled by 32768, rounded to the nearest
    step and clipped to [-32768, 32767] (so +1.0 becomes 32767). `from_pcm16` undoes it exactly for every
    16-bit value; a float in range comes back within half a step (0.5 / 32768)."""
    scaled = np.round(np.asarray(samples, np.float32) * PCM16_SCALE)
    return np.clip(scaled, -PCM16_SCALE, PCM16_SCALE - 1).astype("<i2")


def from_pcm16(data: bytes | np.ndarray) -> np.ndarray:
    """16-bit PCM as float32 samples divided by 32768 (the inverse of `to_pcm16`): little-endian bytes, whose
    odd trailing byte is ignored, or an int16 array."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind != "i" or data.dtype.itemsize != 2:
            raise TypeError(f"16-bit PCM must be int16, not {data.dtype}")
        pcm = data
    else:
        pcm = np.frombuffer(data, "<i2", count=len(data) // 2)
    return pcm.astype(np.float32) / np.float32(PCM16_SCALE)


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


def _decode_blocking(data: bytes, ffmpeg: str, max_output: int) -> tuple[bytes, int]:
    """Write the upload into its own private directory (a file, not a pipe: MP4/M4A uploads often keep their
    index at the end, which needs seeking) and decode it to 16 kHz mono s16le."""
    folder = tempfile.mkdtemp(prefix="upload-")  # mode 0700: no other upload or user can read it
    try:
        path = Path(folder, "upload")
        path.write_bytes(data)
        args = (
            ffmpeg_python.input(str(path), format_whitelist=INPUT_FORMATS, protocol_whitelist=INPUT_PROTOCOLS)
            .output("pipe:1", format="s16le", acodec="pcm_s16le", ac=1, ar=ASR_SAMPLE_RATE)
            .global_args(*GLOBAL_ARGS, "-vn")
            .compile(cmd=ffmpeg)
        )
        try:
            return run_ffmpeg(args, b"", max_output=max_output)
        except FFmpegTimeout as exc:
            raise AudioInputError("That recording took too long to read; please post a shorter one.") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def decode_upload(data: bytes, limits: AudioLimits, ffmpeg: str) -> np.ndarray:
    """Decode any audio ffmpeg understands to float32 mono at 16 kHz.

    Raises `AudioInputError` for empty, oversized, overlong, corrupt, non-audio or silent input.
    """
    check_size(len(data), limits)
    max_output = int(limits.max_seconds * ASR_SAMPLE_RATE) * _BYTES_PER_SAMPLE
    pcm, code = await run_upload_work(_decode_blocking, data, ffmpeg, max_output)
    if len(pcm) > max_output:
        raise _too_long(limits)
    if code != 0 and not pcm:
        raise AudioInputError("I couldn't read that file as audio: it looks corrupt or isn't a sound recording.")
    samples = from_pcm16(pcm)
    if samples.size < ASR_SAMPLE_RATE // 10:
        raise AudioInputError("That recording holds no audio I can hear.")
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioInputError("That recording is silent: nothing to answer.")
    return samples


async def encode_flac(samples: np.ndarray, ffmpeg: str, sample_rate: int = ASR_SAMPLE_RATE) -> bytes:
    """Encode float mono samples as a FLAC file (what Whisper endpoints accept everywhere)."""
    pcm = to_pcm16(samples).tobytes()
    args = (
        ffmpeg_python.input("pipe:0", format="s16le", ac=1, ar=sample_rate)
        .output("pipe:1", format="flac")
        .global_args(*GLOBAL_ARGS)
        .compile(cmd=ffmpeg)
    )
    flac, code = await run_upload_work(run_ffmpeg, args, pcm)
    if code != 0 or not flac:
        raise RuntimeError(f"ffmpeg failed to encode FLAC (exit status {code})")
    return flac


async def upload_to_flac(data: bytes, limits: AudioLimits, ffmpeg: str) -> bytes:
    """Check and convert a user upload to 16 kHz mono FLAC for speech recognition."""
    return await encode_flac(await decode_upload(data, limits, ffmpeg), ffmpeg)
