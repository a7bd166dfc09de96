"""Codec frames → audio, in blocks with a bounded window of context, so codec work is linear in the length."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch


class FrameDecoder:
    """Decodes a growing frame sequence in blocks, each with up to `context` frames of context on both sides.

    Cropping each decoded window to its block's samples makes the chunks join into the same signal as one full
    decode (the codec's receptive field is short).
    """

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], context: int, sizes: Iterator[int]) -> None:
        self._decode = decode
        self._context = context
        self._sizes = sizes
        self._frames: list[torch.Tensor] = []
        self._done = 0
        self._target = next(sizes)

    def add(self, frame: torch.Tensor) -> np.ndarray | None:
        """Append one complete frame; return audio once the next block and its right context are there."""
        self._frames.append(frame)
        if len(self._frames) - self._done < self._target + self._context:
            return None
        return self._emit(self._done + self._target)

    def flush(self) -> np.ndarray | None:
        """Audio for the frames not yet emitted (end of the sentence)."""
        return self._emit(len(self._frames)) if len(self._frames) > self._done else None

    def _emit(self, end: int) -> np.ndarray:
        start = self._done
        lo, hi = max(0, start - self._context), min(len(self._frames), end + self._context)
        audio = self._decode(torch.stack(self._frames[lo:hi], dim=-1))
        hop = audio.shape[-1] // (hi - lo)
        self._done, self._target = end, next(self._sizes)
        return audio[(start - lo) * hop : (end - lo) * hop]


def chunk_frames(first_s: float, chunk_s: float, frame_rate: float) -> Iterator[int]:
    """Block sizes in frames: the first lasts `first_s`, the next ones double up to `chunk_s`.

    Each block is generated while the audio before it plays.
    """
    seconds = first_s
    while True:
        yield max(1, round(min(chunk_s, seconds) * frame_rate))
        seconds *= 2
