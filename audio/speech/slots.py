"""The decoding loop's memory: a static self-attention cache per batch row, each row's cross-attention keys and
values, and the per-voice cache of encoded descriptions.

Rows are kept packed: the requests in flight use rows `0 .. n-1`, so a batch of `B >= n` rows is a view of the
first `B` rows (the rows past `n` are idle padding that the masks keep finite).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


def bucket(n: int, sizes: Sequence[int]) -> int:
    """The smallest size in `sizes` (ascending) that holds `n`; the largest one if none does."""
    return next((size for size in sizes if size >= n), sizes[-1])


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes steps run at: the powers of two below `max_batch`, and `max_batch` itself."""
    return (*(size for size in BATCH_BUCKETS if size < max_batch), max_batch)


def length_buckets(capacity: int, smallest: int = 64) -> tuple[int, ...]:
    """Attention lengths: powers of two from `smallest`, ending at `capacity`."""
    sizes = [smallest]
    while sizes[-1] * 2 < capacity:
        sizes.append(sizes[-1] * 2)
    return (*(size for size in sizes if size < capacity), capacity)


@dataclass(frozen=True)
class VoiceContext:
    """One voice description, encoded: each decoder layer's cross-attention keys and values `(heads, tokens, dim)`."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]


class VoiceCache:
    """The most recently used `size` voice contexts by description: most answers skip the text encoder."""

    def __init__(self, encode: Callable[[str], VoiceContext], size: int = 16) -> None:
        self._encode = encode
        self._size = size
        self._contexts: OrderedDict[str, VoiceContext] = OrderedDict()

    def get(self, description: str) -> VoiceContext:
        context = self._contexts.pop(description, None)
        if context is None:
            context = self._encode(description)
        self._contexts[description] = context
        while len(self._contexts) > self._size:
            self._contexts.popitem(last=False)
        return context


class StaticCache:
    """Preallocated keys and values: `length` self-attention positions and `context` cross-attention tokens per row.

    Memory is zeroed lazily up to the longest length used so far: masked positions must hold finite values
    (a zero attention weight times NaN is NaN), and untouched pages of a large CPU buffer then cost nothing.
    """

    def __init__(
        self,
        *,
        layers: int,
        rows: int,
        heads: int,
        cross_heads: int,
        head_dim: int,
        length: int,
        context: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.rows, self.length, self.context = rows, length, context

        def buffers(heads: int, size: int) -> list[torch.Tensor]:
            return [torch.empty(rows, heads, size, head_dim, dtype=dtype, device=device) for _ in range(layers)]

        self.keys, self.values = buffers(heads, length), buffers(heads, length)
        self.cross_keys, self.cross_values = buffers(cross_heads, context), buffers(cross_heads, context)
        # Additive cross-attention mask per row: 0 on the row's description tokens, -inf past them.
        self.cross_mask = torch.zeros(rows, 1, 1, context, dtype=dtype, device=device)
        self._zeroed = 0
        self._zeroed_context = 0

    def prepare(self, length: int, context: int) -> None:
        """Make positions below `length` and tokens below `context` finite in every row (zeroing the part never
        used before: call it before writing there)."""
        if length > self._zeroed:
            for buffer in (*self.keys, *self.values):
                buffer[:, :, self._zeroed : length].zero_()
            self._zeroed = length
        if context > self._zeroed_context:
            for buffer in (*self.cross_keys, *self.cross_values):
                buffer[:, :, self._zeroed_context : context].zero_()
            self._zeroed_context = context

    def write(
        self, layer: int, rows: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Store `(B, L, heads, dim)` keys and values of rows `rows` `(B, 1)` at their `(B, L)` positions."""
        self.keys[layer][rows, :, positions] = keys
        self.values[layer][rows, :, positions] = values

    def load_voice(self, row: int, voice: VoiceContext) -> None:
        """Give `row` the cross-attention keys and values of `voice`."""
        tokens = voice.length
        for layer, (keys, values) in enumerate(zip(voice.keys, voice.values, strict=True)):
            self.cross_keys[layer][row, :, :tokens] = keys
            self.cross_values[layer][row, :, :tokens] = values
        self.cross_mask[row].fill_(-torch.inf)
        self.cross_mask[row, ..., :tokens] = 0

    def move(self, source: int, target: int, length: int, context: int) -> None:
        """Copy the first `length` positions and `context` tokens of row `source` into row `target`."""
        for buffers, size in ((self.keys, length), (self.values, length)):
            for buffer in buffers:
                buffer[target, :, :size] = buffer[source, :, :size]
        for buffers in (self.cross_keys, self.cross_values):
            for buffer in buffers:
                buffer[target, :, :context] = buffer[source, :, :context]
        self.cross_mask[target] = self.cross_mask[source]
