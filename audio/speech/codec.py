"""Codec frames → audio, in blocks with a bounded window of context, so codec work is linear in the length.

`FrameBlocks` plans the blocks, `FrameDecoder` decodes them in line (the reference engine), and `CodecWorker`
decodes them on its own thread, several requests' blocks of one length in one codec call (the serving engine).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audio.speech.voice import TTSError

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


class WorkerThread:
    """A daemon thread that does pieces of work (decoding steps, codec calls) and can tell when one hangs."""

    def __init__(self, target: Callable[[], None], name: str, work: str, stall_s: float) -> None:
        """`work` names one piece of work in sentences; one running longer than `stall_s` seconds hangs."""
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._work = work
        self._stall_s = stall_s
        self._since: float | None = None

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def working(self) -> Iterator[None]:
        """Time one piece of work."""
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the thread to end; False (and a warning) if it did not."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("The %s thread did not stop within %g seconds", self._thread.name, timeout)
        return not self._thread.is_alive()

    def stuck(self) -> str:
        """Why work given to the thread may never be done (a sentence), or "" while it works."""
        if not self._thread.is_alive():
            return f"the {self._thread.name} thread has stopped"
        since = self._since
        if since is not None and (seconds := time.monotonic() - since) > self._stall_s:
            return f"a {self._work} has been running for {seconds:.0f} seconds"
        return ""


Sink = Callable[[Any], None]
_STOP = object()


class CodecWorker:
    """Decodes blocks on its own thread, so the decoding loop never waits for the codec.

    Each request's blocks (and the markers sent after them with `send`: its end or its error) reach its sink in
    order. Across requests, the next block decoded is the one of the request with the least audio delivered so
    far, so a new answer's first chunk never waits behind the rest of longer answers. Heads of several requests
    with the same number of frames go through `decode_batch` ((batch, codebooks, n) codes → one sample array each)
    together, up to `max_batch` per call (1 on CPUs, where a batched DAC decode costs more per block than one at a
    time). A codec failure reaches the sink of the block concerned as the exception and calls its `on_error`; a
    failure anywhere else in the worker ends every request it holds with `TTSError`, and the worker goes on.
    A call running longer than `stall_s` makes `stuck()` say so (a decode that never returns).
    """

    def __init__(
        self, decode_batch: Callable[[torch.Tensor], list[np.ndarray]], max_batch: int = 32, stall_s: float = 30.0
    ) -> None:
        self._decode_batch = decode_batch
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[Sink, deque[tuple[Block | None, Any]]] = {}
        self._delivered: dict[Sink, int] = {}
        self._decoding: list[tuple[Sink, Any]] = []  # the heads taken out of `_pending` for the current call
        self._thread = WorkerThread(self._run, "speech-codec", "speech codec call", stall_s)
        self._thread.start()

    def submit(
        self, block: Block, sink: Sink, on_error: Callable[[], None], skip: Callable[[], bool] = lambda: False
    ) -> None:
        """Decode `block` and hand its samples to `sink`, unless `skip()` is true by then (a cancelled request)."""
        self._jobs.put((sink, block, (on_error, skip)))

    def send(self, item: Any, sink: Sink) -> None:
        """Hand `item` (the request's last) to `sink` once every block submitted before it has been delivered."""
        self._jobs.put((sink, None, item))

    def close(self, timeout: float = 10.0) -> bool:
        """Stop after the jobs already queued, waiting at most `timeout` seconds; False if it did not stop."""
        self._jobs.put(_STOP)
        return self._thread.join(timeout)

    def stuck(self) -> str:
        """Why blocks given to the worker may never be delivered (a sentence), or "" when it works."""
        return self._thread.stuck()

    def _run(self) -> None:
        stopping = False
        while not (stopping and not self._pending):
            try:
                stopping = self._take_jobs(stopping)
                self._deliver_markers()
                if self._pending:
                    self._decode_next()
            except BaseException as exc:  # nobody may wait forever for a dead worker
                log.exception("The speech codec worker failed; the answers it held end")
                self._fail_all(exc)

    def _take_jobs(self, stopping: bool) -> bool:
        """Move the queued jobs to the requests' queues (waiting for one when idle); True once told to stop."""
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
                return stopping

    def _fail_all(self, exc: BaseException) -> None:
        """End every request the worker holds with `TTSError`; their blocks still to come are skipped."""
        error = TTSError(f"the speech codec failed: {exc}")
        held: dict[Sink, list[Any]] = {}
        for sink, extra in self._decoding:
            held.setdefault(sink, []).append(extra)
        for sink, jobs in self._pending.items():
            held.setdefault(sink, []).extend(extra for block, extra in jobs if block is not None)
        self._decoding, self._pending = [], {}
        for sink, extras in held.items():
            self._delivered.pop(sink, None)
            try:
                for on_error, _skip in extras:
                    on_error()
                sink(error)
            except BaseException:  # one broken sink must not keep the others waiting
                log.exception("Ending a speech request failed")

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
        self._decoding = [(sink, extra) for sink, (_, extra) in zip(group, heads, strict=True)]
        try:
            with self._thread.working():
                audio = self._decode_batch(torch.stack([block.codes for block, _ in heads]))
        except BaseException as exc:  # one bad call must not end the worker
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
        self._decoding = []
        for sink in group:
            if not self._pending[sink]:
                del self._pending[sink]
