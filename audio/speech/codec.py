"""Codec frames → audio, in blocks with a bounded window of context, so codec work is linear in the length.

`FrameBlocks` plans the blocks, `FrameDecoder` decodes them in line (the reference engine), and `CodecWorker`
decodes them on its own thread, several requests' blocks of one length in one codec call (the serving engine).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
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

    Each request's blocks (and the markers sent after them with `send`: its end or its error) reach its sink in
    order. Across requests, the next block decoded is the one of the request with the least audio delivered so
    far, so a new answer's first chunk never waits behind the rest of longer answers. Heads of several requests
    with the same number of frames go through `decode_batch` ((batch, codebooks, n) codes → one sample array each)
    together, up to `max_batch` per call (1 on CPUs, where a batched DAC decode costs more per block than one at a
    time). A codec failure reaches the sink of the block concerned as the exception and calls its `on_error`.
    """

    def __init__(self, decode_batch: Callable[[torch.Tensor], list[np.ndarray]], max_batch: int = 32) -> None:
        self._decode_batch = decode_batch
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[Sink, deque[tuple[Block | None, Any]]] = {}
        self._delivered: dict[Sink, int] = {}
        self._thread = threading.Thread(target=self._run, name="speech-codec", daemon=True)
        self._thread.start()

    def submit(
        self, block: Block, sink: Sink, on_error: Callable[[], None], skip: Callable[[], bool] = lambda: False
    ) -> None:
        """Decode `block` and hand its samples to `sink`, unless `skip()` is true by then (a cancelled request)."""
        self._jobs.put((sink, block, (on_error, skip)))

    def send(self, item: Any, sink: Sink) -> None:
        """Hand `item` (the request's last) to `sink` once every block submitted before it has been delivered."""
        self._jobs.put((sink, None, item))

    def close(self) -> None:
        """Stop after the jobs already queued."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while True:
            if not self._pending and stopping:
                return
            job = self._jobs.get() if not self._pending else None
            while True:
                if job is _STOP:
                    stopping = True
                elif job is not None:
                    sink, block, extra = job
                    self._pending.setdefault(sink, deque()).append((block, extra))
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
            self._deliver_markers()
            if self._pending:
                self._decode_next()

    def _deliver_markers(self) -> None:
        """Hand out the markers at the head of each request's queue (they need no codec)."""
        for sink in list(self._pending):
            jobs = self._pending[sink]
            while jobs and jobs[0][0] is None:
                sink(jobs.popleft()[1])
                self._delivered.pop(sink, None)
            if not jobs:
                del self._pending[sink]

    def _decode_next(self) -> None:
        """Decode the head block of the request with the least audio, with same-sized heads of others."""
        for sink in list(self._pending):  # drop the blocks nobody will hear
            jobs = self._pending[sink]
            while jobs and jobs[0][0] is not None and jobs[0][1][1]():
                jobs.popleft()
            if not jobs:
                del self._pending[sink]
            elif jobs[0][0] is None:
                self._deliver_markers()
                return
        if not self._pending:
            return
        order = sorted(self._pending, key=lambda sink: self._delivered.get(sink, 0))
        shape = self._pending[order[0]][0][0].codes.shape
        group = [sink for sink in order if self._pending[sink][0][0].codes.shape == shape][: self._max_batch]
        heads = [self._pending[sink].popleft() for sink in group]
        try:
            audio = self._decode_batch(torch.stack([block.codes for block, _ in heads]))
        except Exception as exc:  # one bad call must not end the worker
            log.exception("Codec decode failed for %d blocks", len(heads))
            for sink, (_, (on_error, _skip)) in zip(group, heads, strict=True):
                on_error()
                sink(exc)
                self._delivered.pop(sink, None)  # the request has ended: no marker follows
        else:
            for sink, (block, _), samples in zip(group, heads, audio, strict=True):
                chunk = block.cut(samples)
                self._delivered[sink] = self._delivered.get(sink, 0) + chunk.size
                if chunk.size:
                    sink(chunk)
        for sink in group:
            if not self._pending[sink]:
                del self._pending[sink]
