"""Codec frames → audio, in blocks with a bounded window of context, so codec work is linear in the length.

`FrameBlocks` plans the blocks, `FrameDecoder` decodes them in line (the reference engine), and `CodecWorker`
decodes them on its own thread, several requests' blocks of one length in one codec call (the serving engine).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """Frames `codes` (codebooks, n) to decode; the audio of frames `[start, stop)` of them is kept."""

    codes: torch.Tensor
    start: int
    stop: int

    def cut(self, audio: np.ndarray) -> np.ndarray:
        """The block's own samples out of the decoded window."""
        hop = audio.shape[-1] // self.codes.shape[-1]
        return audio[self.start * hop : self.stop * hop]


class FrameBlocks:
    """Splits a growing frame sequence into blocks, each with up to `context` frames of context on both sides.

    Cropping each decoded window to its block's samples makes the chunks join into the same signal as one full
    decode (the codec's receptive field is short).
    """

    def __init__(self, context: int, sizes: Iterator[int]) -> None:
        self._context = context
        self._sizes = sizes
        self._frames: list[torch.Tensor] = []
        self._done = 0
        self._target = next(sizes)

    def add(self, frame: torch.Tensor) -> Block | None:
        """Append one complete frame; return a block once the next one and its right context are there."""
        self._frames.append(frame)
        if len(self._frames) - self._done < self._target + self._context:
            return None
        return self._block(self._done + self._target)

    def flush(self) -> Block | None:
        """The frames not yet in a block (end of the sentence)."""
        return self._block(len(self._frames)) if len(self._frames) > self._done else None

    def _block(self, end: int) -> Block:
        start = self._done
        lo, hi = max(0, start - self._context), min(len(self._frames), end + self._context)
        self._done, self._target = end, next(self._sizes)
        return Block(torch.stack(self._frames[lo:hi], dim=-1), start - lo, end - lo)


class FrameDecoder:
    """`FrameBlocks` decoded in line with `decode` ((codebooks, n) codes → samples)."""

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], context: int, sizes: Iterator[int]) -> None:
        self._decode = decode
        self._blocks = FrameBlocks(context, sizes)

    def add(self, frame: torch.Tensor) -> np.ndarray | None:
        """Append one complete frame; return audio once the next block and its right context are there."""
        return self._audio(self._blocks.add(frame))

    def flush(self) -> np.ndarray | None:
        """Audio for the frames not yet emitted (end of the sentence)."""
        return self._audio(self._blocks.flush())

    def _audio(self, block: Block | None) -> np.ndarray | None:
        return None if block is None else block.cut(self._decode(block.codes))


def chunk_frames(first_s: float, chunk_s: float, frame_rate: float) -> Iterator[int]:
    """Block sizes in frames: the first lasts `first_s`, the next ones double up to `chunk_s`.

    Each block is generated while the audio before it plays.
    """
    seconds = first_s
    while True:
        yield max(1, round(min(chunk_s, seconds) * frame_rate))
        seconds *= 2


Sink = Callable[[Any], None]
_STOP = object()


class CodecWorker:
    """Decodes blocks on its own thread, so the decoding loop never waits for the codec.

    Jobs are handled in submission order, so each request's chunks (and the markers sent after them with `send`)
    reach its sink in order. Whatever is queued when the worker wakes up is decoded together: blocks with the same
    number of frames go through `decode_batch` ((batch, codebooks, n) codes → one sample array each) in one call.
    A codec failure reaches the sinks of the blocks concerned as the exception and calls their `on_error`.
    """

    def __init__(self, decode_batch: Callable[[torch.Tensor], list[np.ndarray]], max_batch: int = 32) -> None:
        self._decode_batch = decode_batch
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="speech-codec", daemon=True)
        self._thread.start()

    def submit(self, block: Block, sink: Sink, on_error: Callable[[], None]) -> None:
        """Decode `block` and hand its samples to `sink`."""
        self._jobs.put((block, sink, on_error))

    def send(self, item: Any, sink: Sink) -> None:
        """Hand `item` to `sink` once every block submitted before it has been delivered."""
        self._jobs.put((None, sink, item))

    def close(self) -> None:
        """Stop after the jobs already queued."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            jobs = [job]
            while len(jobs) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    self._handle(jobs)
                    return
                jobs.append(job)
            self._handle(jobs)

    def _handle(self, jobs: list[tuple[Block | None, Sink, Any]]) -> None:
        audio = self._decode_all([block for block, _, _ in jobs if block is not None])
        for block, sink, extra in jobs:
            if block is None:
                sink(extra)
                continue
            result = audio[id(block)]
            if isinstance(result, BaseException):
                extra()
                sink(result)
            elif result.size:
                sink(result)

    def _decode_all(self, blocks: list[Block]) -> dict[int, np.ndarray | BaseException]:
        """Each block's samples (or the exception that stopped its group), keyed by `id(block)`."""
        groups: dict[tuple[int, ...], list[Block]] = {}
        for block in blocks:
            groups.setdefault(tuple(block.codes.shape), []).append(block)
        results: dict[int, np.ndarray | BaseException] = {}
        for group in groups.values():
            try:
                decoded = self._decode_batch(torch.stack([block.codes for block in group]))
            except Exception as exc:  # one bad group must not end the worker
                log.exception("Codec decode failed for %d blocks", len(group))
                results.update((id(block), exc) for block in group)
            else:
                results.update((id(block), block.cut(audio)) for block, audio in zip(group, decoded, strict=True))
        return results
