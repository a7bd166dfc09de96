"""The decoder step captured as CUDA graphs, one per (batch, attention length) bucket, for the GPU path.

A captured step replays every kernel launch of the 24-layer step in one call, which removes the per-kernel
launch overhead that dominates an eager step at small batch sizes. Shapes are static per bucket: the batch rows
are the first `B` rows of the static cache, the attention reads `length` cached positions, and the cross-attention
always reads the whole description capacity (its mask hides the padding).
"""

from __future__ import annotations

import logging
import time

import torch

from audio.speech.decoder import ParlerDecoder

log = logging.getLogger(__name__)


class CudaGraphs:
    """A `Runner` that replays captured steps; `warm_up()` captures every bucket (blocking, at load)."""

    def __init__(self, decoder: ParlerDecoder, batches: tuple[int, ...], lengths: tuple[int, ...]) -> None:
        self.decoder = decoder
        self.batches, self.lengths = batches, lengths
        device = decoder.device
        self._tokens = torch.zeros(max(batches), decoder.num_codebooks, dtype=torch.long, device=device)
        self._positions = torch.zeros(max(batches), 1, dtype=torch.long, device=device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def warm_up(self) -> CudaGraphs:
        """Capture the step for every bucket, the largest first so that they all share its memory pool."""
        started = time.monotonic()
        cache = self.decoder.cache
        cache.prepare(cache.length, cache.context)
        stream = torch.cuda.Stream(self.decoder.device)
        stream.wait_stream(torch.cuda.current_stream(self.decoder.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for size in sorted(self.batches, reverse=True):
                for length in sorted(self.lengths, reverse=True):
                    for _ in range(2):  # lets lazy initialisation (cuBLAS handles, kernels) happen outside capture
                        self._step(size, length)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                        output = self._step(size, length)
                    self._graphs[size, length] = (graph, output)
        torch.cuda.current_stream(self.decoder.device).wait_stream(stream)
        torch.cuda.synchronize(self.decoder.device)
        log.info("Captured %d decoder steps as CUDA graphs in %.1f s", len(self._graphs), time.monotonic() - started)
        return self

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, length: int, context: int) -> torch.Tensor:
        size = tokens.shape[0]
        graph, output = self._graphs[size, length]
        self._tokens[:size].copy_(tokens)
        self._positions[:size].copy_(positions)
        graph.replay()
        return output  # overwritten by the next replay: the loop reads it before stepping again

    def _step(self, size: int, length: int) -> torch.Tensor:
        context = self.decoder.cache.context
        return self.decoder.step(self._tokens[:size], self._positions[:size], length, context)
