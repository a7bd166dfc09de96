"""Shared helpers for audio tests: decoding with ffmpeg and comparing signals."""

from __future__ import annotations

import subprocess

import numpy as np


def decode(data: bytes, ffmpeg: str, *input_args: str) -> np.ndarray:
    """Decode with ffmpeg to 48 kHz mono float32."""
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", *input_args, "-i", "pipe:0"]
    cmd += ["-af", "aresample=resampler=soxr", "-ar", "48000", "-ac", "1", "-f", "f32le", "pipe:1"]
    return np.frombuffer(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout, "<f4")


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson correlation of `a` and `b` at their best alignment, and that lag (a[i] ≈ b[i - lag])."""
    n = len(a) + len(b)
    cross = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lag = int(np.argmax(cross))
    lag = lag - n if lag > len(a) else lag
    x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(len(x), len(y))
    return float(np.corrcoef(x[:m], y[:m])[0, 1]), lag
