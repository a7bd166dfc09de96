"""Cuts one member's stream of 20 ms frames into utterances: from the onset of speech to a stretch of silence."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from audio.listen.opus import SAMPLE_RATE

FRAME_SECONDS = 0.02
EndReason = Literal["silence", "max"]


@dataclass(frozen=True)
class SegmenterConfig:
    """When an utterance starts and ends (seconds are multiples of 20 ms frames)."""

    silence_seconds: float = 0.8  # this much silence after speech ends the utterance
    max_seconds: float = 15.0  # an utterance is cut here however long the member talks
    onset_frames: int = 3  # consecutive speech frames that start an utterance (a click is not speech)
    preroll_frames: int = 10  # audio kept from before the onset, so the first syllable isn't clipped
    tail_frames: int = 10  # silence kept after the last speech frame


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech: 16 kHz mono int16 samples and why it ended."""

    pcm: np.ndarray
    reason: EndReason

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


class Segmenter:
    """Feed frames with the voice activity verdict; an `Utterance` comes out when one ends."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self._silence_limit = max(1, round(config.silence_seconds / FRAME_SECONDS))
        self._max_frames = max(1, round(config.max_seconds / FRAME_SECONDS))
        self._before: deque[np.ndarray] = deque(maxlen=config.preroll_frames + config.onset_frames)
        self._frames: list[np.ndarray] = []
        self._speech_run = 0
        self._silence_run = 0
        self.started = False  # an utterance is under way

    def feed(self, frame: np.ndarray, speech: bool) -> Utterance | None:
        """Add one frame; returns the utterance it ended, if any."""
        if not self.started:
            self._before.append(frame)
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= self.config.onset_frames:
                self.started = True
                self._frames = list(self._before)
                self._before.clear()
                self._silence_run = 0
            return None
        self._frames.append(frame)
        self._silence_run = 0 if speech else self._silence_run + 1
        if self._silence_run >= self._silence_limit:
            return self._end("silence")
        if len(self._frames) >= self._max_frames:
            return self._end("max")
        return None

    @property
    def trailing_silence_seconds(self) -> float:
        """Silence since the last speech frame of the utterance under way."""
        return self._silence_run * FRAME_SECONDS if self.started else 0.0

    def finish(self) -> Utterance | None:
        """End the utterance under way because the sender went quiet (no packets at all), if there is one."""
        return self._end("silence") if self.started else None

    def _end(self, reason: EndReason) -> Utterance:
        keep = len(self._frames) - max(0, self._silence_run - self.config.tail_frames)
        pcm = np.concatenate(self._frames[:keep])
        self._frames = []
        self._speech_run = self._silence_run = 0
        self.started = False
        return Utterance(pcm, reason)
