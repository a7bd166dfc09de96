"""Voice activity: which 20 ms frames of 16 kHz audio hold speech (WebRTC's detector; see bench/RESULTS.md for
why it was chosen over Silero VAD)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import webrtcvad

from audio.listen.opus import FRAME_SAMPLES, SAMPLE_RATE


class VoiceActivity(Protocol):
    """Tells speech from silence, one 20 ms frame (int16, 16 kHz mono) at a time."""

    def is_speech(self, frame: np.ndarray) -> bool: ...


class WebRtcVad:
    """The WebRTC detector; `aggressiveness` 0 (lets most through) to 3 (strictest). Frames quieter than
    `min_rms` (default about -50 dBFS) are silence whatever it says: alone it calls faint hiss speech."""

    def __init__(self, aggressiveness: int = 2, min_rms: float = 100.0) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._min_square = min_rms**2

    def is_speech(self, frame: np.ndarray) -> bool:
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"a frame is {FRAME_SAMPLES} samples, not {len(frame)}")
        if float(np.mean(frame.astype(np.float32) ** 2)) < self._min_square:
            return False
        return self._vad.is_speech(frame.astype("<i2").tobytes(), SAMPLE_RATE)
