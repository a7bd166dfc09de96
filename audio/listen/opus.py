"""Opus frames → 16 kHz mono 16-bit PCM with PyAV's bundled FFmpeg decoder (no system libopus needed)."""

from __future__ import annotations

import av
import numpy as np

SAMPLE_RATE = 16_000
FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms


class OpusDecoder:
    """One sender's Opus decoder (Opus keeps state between frames), resampled to 16 kHz mono."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("opus", "r")
        self._codec.sample_rate = 48_000
        self._codec.layout = "stereo"
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.errors = 0

    def decode(self, frame: bytes | None) -> np.ndarray:
        """The audio of one frame (int16; the resampler's delay makes the first one a little short), or 20 ms
        of silence for a missing or undecodable frame."""
        if frame is None:
            return np.zeros(FRAME_SAMPLES, np.int16)
        try:
            decoded = self._codec.decode(av.Packet(frame))
        except av.error.FFmpegError:
            self.errors += 1
            return np.zeros(FRAME_SAMPLES, np.int16)
        chunks = [out.to_ndarray().reshape(-1) for f in decoded for out in self._resampler.resample(f)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
