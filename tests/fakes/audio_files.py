"""Audio inputs generated in the tests: tones shaped like speech, encoded by ffmpeg into upload formats."""

from __future__ import annotations

import subprocess
import tempfile

import numpy as np

from audio.formats import to_pcm16

FORMATS = {  # extension -> ffmpeg output arguments
    "ogg": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],  # what Discord voice messages are
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "webm": ["-c:a", "libopus", "-f", "webm"],
    "m4a": ["-c:a", "aac", "-f", "ipod"],
}


def speechlike(seconds: float, sample_rate: int = 48_000, seed: int = 0) -> np.ndarray:
    """A voiced-sounding signal: harmonics of a gliding pitch with a syllable-rate envelope."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi))
    return (0.3 * voice * envelope).astype(np.float32)


def encode(samples: np.ndarray, ext: str, ffmpeg: str, sample_rate: int = 48_000) -> bytes:
    """Encode float mono samples into the container/codec users upload with extension `ext`."""
    pcm = to_pcm16(samples).tobytes()
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(sample_rate), "-ac", "1"]
    with tempfile.NamedTemporaryFile(suffix=f".{ext}") as out:  # a file: MP4 writes its index at the end
        cmd += ["-i", "pipe:0", *FORMATS[ext], "-y", out.name]
        subprocess.run(cmd, input=pcm, capture_output=True, check=True)
        return out.read()
