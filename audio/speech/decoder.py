"""Parler-TTS's decoder run on the static cache: the prefill of one row and one step of a packed batch.

The arithmetic is the model's own (its layers, norms and heads are called as they are, so int8-quantized linear
layers work unchanged); only the attention reads the static cache, with additive masks instead of a dynamic cache.
Sinusoidal positions and a prompt prepended to the decoder input, as in every Parler-TTS v1 checkpoint, are
supported; rotary embeddings and prompt cross-attention are refused at load.
"""

from __future__ import annotations

import torch
from parler_tts import ParlerTTSForCausalLM, ParlerTTSForConditionalGeneration
from torch.nn import functional as F

from audio.speech.slots import StaticCache, VoiceContext


class ParlerDecoder:
    """One model's decoder with a `StaticCache` of `rows` rows and `length` positions per row.

    `layers` replaces `model.decoder` (the decoder layers, embeddings and heads), e.g. a converted copy of it; the
    text encoder and prompt embeddings stay `model`'s.
    """

    def __init__(
        self,
        model: ParlerTTSForConditionalGeneration,
        *,
        rows: int,
        length: int,
        context: int,
        layers: ParlerTTSForCausalLM | None = None,
    ) -> None:
        layers = model.decoder if layers is None else layers
        config = layers.config
        if config.rope_embeddings or model.prompt_cross_attention:
            raise NotImplementedError("the serving engine supports sinusoidal positions and prepended prompts only")
        self.model = model
        self.decoder = layers.model.decoder
        self._lm_heads = layers.lm_heads
        self._cross_hidden = config.cross_attention_hidden_size
        self.num_codebooks: int = config.num_codebooks
        self.vocab_size: int = config.vocab_size
        self._heads = config.num_attention_heads
        self._head_dim = config.hidden_size // config.num_attention_heads
        # `fuse_projections` gives copies one query-key-value product per layer.
        self._fused = hasattr(self.decoder.layers[0].self_attn, "qkv_proj")
        kv_size = config.num_key_value_heads * self._head_dim
        self._qkv_sizes = [config.hidden_size, kv_size, kv_size]
        self._positions: torch.Tensor = self.decoder.embed_positions.weights
        if length > self._positions.shape[0]:
            raise ValueError(f"{length} positions exceed the model's {self._positions.shape[0]}")
        self.dtype = next(layers.parameters()).dtype
        self.device = model.device
        self.cache = StaticCache(
            layers=len(self.decoder.layers),
            rows=rows,
            heads=config.num_key_value_heads,
            cross_heads=config.num_cross_attention_key_value_heads,
            head_dim=self._head_dim,
            length=length,
            context=context,
            dtype=self.dtype,
            device=self.device,
        )

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> VoiceContext:
        """A description's cross-attention keys and values for every layer (`(1, tokens)` inputs)."""
        model = self.model
        states = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if model.text_encoder.config.hidden_size != self.decoder.config.hidden_size and self._cross_hidden is None:
            states = model.enc_to_dec_proj(states)
        states = (states * attention_mask[..., None]).to(self.dtype)
        keys, values = [], []
        for layer in self.decoder.layers:
            attention = layer.encoder_attn
            keys.append(self._split(attention.k_proj(states), attention.num_key_value_heads)[0])
            values.append(self._split(attention.v_proj(states), attention.num_key_value_heads)[0])
        return VoiceContext(tuple(keys), tuple(values))

    def prompt(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The `(1, tokens, hidden)` prompt embeddings prepended to the decoder input."""
        return self.model.embed_prompts(input_ids).to(self.dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, codebooks)` ids of one position → `(B, 1, hidden)` input embeddings (summed over codebooks)."""
        return sum(self.decoder.embed_tokens[k](tokens[:, k : k + 1]) for k in range(self.num_codebooks))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, length: int, context: int) -> torch.Tensor:
        """One step of rows `0 .. B-1`: `(B, codebooks)` ids at `(B, 1)` positions → `(B, codebooks, vocab)` logits.

        Static shapes for a given `(B, length, context)`: the step a CUDA graph captures, and the eager step.
        """
        return self.forward(self.embed(tokens), positions, 0, length, context)

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, start: int, length: int, context: int
    ) -> torch.Tensor:
        """Run `(B, L, hidden)` inputs of rows `start ..` at `(B, L)` positions, attending to the first `length`
        cached positions and `context` description tokens; fp32 logits of each row's last position."""
        batch, steps, _ = hidden.shape
        cache = self.cache
        hidden = hidden + self._positions[positions].to(hidden.dtype)
        keys_at = torch.arange(length, device=hidden.device)
        self_mask = torch.zeros(batch, 1, steps, length, dtype=hidden.dtype, device=hidden.device)
        self_mask.masked_fill_((keys_at > positions[..., None])[:, None], -torch.inf)
        cross_mask = cache.cross_mask[start : start + batch, ..., :context]
        rows = slice(start, start + batch)
        row_ids = torch.arange(start, start + batch, device=hidden.device)[:, None]  # once, for every layer's write
        for index, layer in enumerate(self.decoder.layers):
            attention = layer.self_attn
            normed = layer.self_attn_layer_norm(hidden)
            if self._fused:
                query, key, value = attention.qkv_proj(normed).split(self._qkv_sizes, dim=-1)
            else:
                query, key, value = attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)
            query = self._split(query, self._heads)
            key = key.view(batch, steps, attention.num_key_value_heads, self._head_dim)
            value = value.view(batch, steps, attention.num_key_value_heads, self._head_dim)
            cache.write(index, row_ids, positions, key, value)
            attended = self._attend(
                query, cache.keys[index][rows, :, :length], cache.values[index][rows, :, :length], self_mask
            )
            hidden = hidden + attention.out_proj(attended)

            attention = layer.encoder_attn
            normed = layer.encoder_attn_layer_norm(hidden)
            query = self._split(attention.q_proj(normed), self._heads)
            attended = self._attend(
                query,
                cache.cross_keys[index][rows, :, :context],
                cache.cross_values[index][rows, :, :context],
                cross_mask,
            )
            hidden = hidden + attention.out_proj(attended)

            normed = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(normed)))
        return self._logits(self.decoder.layer_norm(hidden[:, -1:]))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        heads = self._lm_heads
        batch = hidden.shape[0]
        if isinstance(heads, torch.nn.ModuleList):
            logits = torch.stack([head(hidden[:, 0]) for head in heads], dim=1)
        else:  # fused heads
            logits = heads(hidden[:, 0]).view(batch, self.num_codebooks, self.vocab_size)
        return logits.float()

    def _split(self, states: torch.Tensor, heads: int) -> torch.Tensor:
        """`(B, L, heads * dim)` → `(B, heads, L, dim)`."""
        batch, steps, _ = states.shape
        return states.view(batch, steps, heads, self._head_dim).transpose(1, 2)

    def _attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """SDPA over cached keys; `(B, heads, L, dim)` queries → `(B, L, hidden)`."""
        output = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != query.shape[1]
        )
        batch, _, steps, _ = output.shape
        return output.transpose(1, 2).reshape(batch, steps, -1)
