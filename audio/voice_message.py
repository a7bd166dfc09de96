"""A finished answer as a Discord voice message: OGG/Opus 48 kHz mono, its duration and a 256-byte waveform."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from audio.ffmpeg import GLOBAL_ARGS, ffmpeg_exe, run_ffmpeg
from audio.source import as_mono_f32, resampled_stdin

WAVEFORM_POINTS = 256
VOICE_BITRATE = "48k"


@dataclass(frozen=True)
class VoiceMessage:
    """What a voice-message upload needs: the file, `duration_secs` and the `waveform` bytes (0–255)."""

    CONTENT_TYPE: ClassVar[str] = "audio/ogg"
    FILENAME: ClassVar[str] = "voice-message.ogg"

    ogg: bytes
    duration_secs: float
    waveform: bytes

    def waveform_b64(self) -> str:
        """The waveform as Discord's attachment field wants it (base64)."""
        return base64.b64encode(self.waveform).decode("ascii")


def waveform(samples: np.ndarray, points: int = WAVEFORM_POINTS) -> bytes:
    """Loudness envelope: the RMS of `points` equal slices, scaled so that the loudest slice is 255."""
    slices = np.array_split(np.asarray(samples, dtype=np.float64), points)
    rms = np.array([np.sqrt(np.mean(np.square(part))) if part.size else 0.0 for part in slices])
    peak = rms.max()
    scaled = rms / peak * 255 if peak > 0 else rms
    return np.rint(scaled).astype(np.uint8).tobytes()


def encode_voice_message(samples: np.ndarray, sample_rate: int, *, ffmpeg: str | None = None) -> VoiceMessage:
    """Encode float32 mono `samples` at `sample_rate` as a voice message (runs ffmpeg; blocking)."""
    audio = as_mono_f32(samples)
    if not audio.size or sample_rate <= 0:
        raise ValueError("a voice message needs at least one sample at a positive sample rate")
    stream = resampled_stdin(sample_rate).output(
        "pipe:", format="ogg", acodec="libopus", ac=1, **{"b:a": VOICE_BITRATE}
    )
    ogg, code = run_ffmpeg(stream.global_args(*GLOBAL_ARGS).compile(cmd=ffmpeg or ffmpeg_exe()), audio.tobytes())
    if code != 0 or not ogg:
        raise RuntimeError(f"ffmpeg could not encode the voice message (exit status {code})")
    return VoiceMessage(ogg=ogg, duration_secs=audio.size / sample_rate, waveform=waveform(audio))
