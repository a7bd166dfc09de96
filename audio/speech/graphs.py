"""The decoder step captured as CUDA graphs, one per (batch, attention length) bucket, for the GPU path.

A captured step replays every kernel launch of the 24-layer step in one call, which removes the per-kernel
launch overhead that dominates an eager step at small batch sizes. Shapes are static per bucket: the batch rows
are the first `B` rows of the static cache, the attention reads `length` cached positions, and the cross-attention
always reads the whole description capacity (its mask hides the padding).

`CudaGraphs` reaches CUDA only through a `Capture` (`CudaCapture` on GPUs), so the same bucket keys, static input
buffers and output aliasing can be driven on a CPU by a stand-in whose replay re-runs the step (bench.gpu_smoke).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Protocol

import torch

from audio.speech.decoder import ParlerDecoder

log = logging.getLogger(__name__)

Replay = Callable[[], None]


class Capture(Protocol):
    """Records a step once and replays it into the same output tensor."""

    def session(self) -> AbstractContextManager[None]:
        """A context around all captures (the side stream they run on; everything finished on leaving)."""
        ...

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        """Capture `step()`; its replay and the output tensor every replay overwrites."""
        ...


class CudaCapture:
    """`torch.cuda.CUDAGraph`s sharing one memory pool, captured on a side stream of `device`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream(device)

    @contextmanager
    def session(self) -> Iterator[None]:
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        torch.cuda.synchronize(self.device)

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            output = step()
        return graph.replay, output


class CudaGraphs:
    """A `Runner` that replays captured steps; `warm_up()` captures every bucket (blocking, at load)."""

    def __init__(
        self,
        decoder: ParlerDecoder,
        batches: tuple[int, ...],
        lengths: tuple[int, ...],
        capture: Capture | None = None,
    ) -> None:
        self.decoder = decoder
        self.batches, self.lengths = batches, lengths
        device = decoder.device
        self.capture_s = 0.0
        self._capture = capture or CudaCapture(device)
        self._tokens = torch.zeros(max(batches), decoder.num_codebooks, dtype=torch.long, device=device)
        self._positions = torch.zeros(max(batches), 1, dtype=torch.long, device=device)
        self._graphs: dict[tuple[int, int], tuple[Replay, torch.Tensor]] = {}

    def warm_up(self) -> CudaGraphs:
        """Capture the step for every bucket, the largest first so that they all share its memory pool."""
        started = time.monotonic()
        cache = self.decoder.cache
        cache.prepare(cache.length, cache.context)
        with torch.inference_mode(), self._capture.session():
            for size in sorted(self.batches, reverse=True):
                for length in sorted(self.lengths, reverse=True):
                    for _ in range(2):  # lets lazy initialisation (cuBLAS handles, kernels) happen outside capture
                        self._step(size, length)
                    self._graphs[size, length] = self._capture.capture(partial(self._step, size, length))
        self.capture_s = time.monotonic() - started
        log.info("Captured %d decoder steps as graphs in %.1f s", len(self._graphs), self.capture_s)
        return self

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, length: int, context: int) -> torch.Tensor:
        size = tokens.shape[0]
        replay, output = self._graphs[size, length]
        self._tokens[:size].copy_(tokens)
        self._positions[:size].copy_(positions)
        replay()
        return output  # overwritten by the next replay: the loop reads it before stepping again

    def _step(self, size: int, length: int) -> torch.Tensor:
        context = self.decoder.cache.context
        return self.decoder.step(self._tokens[:size], self._positions[:size], length, context)
