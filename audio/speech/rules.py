"""Parler-TTS 0.2.3's generation semantics, applied to a batch of independent sentences at once.

`model.generate()` feeds a BOS column after the prompt, shifts codebook k by k steps (the delay pattern: BOS
before a codebook starts, padding near `max_length`), forbids EOS before `min_new_tokens` and lets codebook k end
only after codebook k-1 has (`ParlerTTSLogitsProcessor`), pads every codebook once it has emitted EOS, and stops
when all codebooks have or at `max_length`. `Rules` reproduces that per row, with each row's own step count, so
rows that joined at different times share one batch; sampling draws each row's noise from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from parler_tts import ParlerTTSForConditionalGeneration
from transformers import GenerationConfig

DEMO_MIN_NEW_TOKENS = 10
"""`min_new_tokens` when the checkpoint sets none (the original demo's value)."""
DEMO_TEMPERATURE = 1.0
"""The sampling temperature when the checkpoint sets none (the original demo's value)."""

# `generate()` settings the decoding loop does not implement, with the value that leaves `generate()` unchanged
# (None or an empty list are neutral too).
_NEUTRAL: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "guidance_scale": 1.0,
    "typical_p": 1.0,
    "min_p": 0.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "bad_words_ids": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "num_beams": 1,
}


def checkpoint_sampling(generation: GenerationConfig) -> tuple[int, float]:
    """The checkpoint's `min_new_tokens` and temperature (the demo's 10 and 1.0 where unset).

    Raises `ValueError` with one sentence when the config sets a non-neutral value of something the decoding
    loop does not implement: serving it would silently differ from `generate()`.
    """
    unsupported = [
        f"{name}={value!r}"
        for name, neutral in _NEUTRAL.items()
        if (value := getattr(generation, name, None)) not in (None, [], neutral)
    ]
    if unsupported:
        raise ValueError(
            f"The checkpoint's generation config sets {', '.join(unsupported)}, which the speech engine does not "
            "implement."
        )
    temperature = DEMO_TEMPERATURE if generation.temperature is None else float(generation.temperature)
    if temperature <= 0:
        raise ValueError(f"The checkpoint's generation config sets temperature={temperature}; it must be above 0.")
    min_new = DEMO_MIN_NEW_TOKENS if generation.min_new_tokens is None else generation.min_new_tokens
    return min_new, temperature


@dataclass(frozen=True)
class Rules:
    """The per-sentence generation settings; `audio_only` is the `AudioCodesOnly` hook (no id past the codebook)."""

    num_codebooks: int
    codebook_size: int
    start_id: int
    bos_id: int
    pad_id: int
    eos_id: int
    max_length: int
    min_new_tokens: int
    min_length: int
    audio_only: bool
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float

    @classmethod
    def of(
        cls,
        model: ParlerTTSForConditionalGeneration,
        *,
        frames_per_sentence: int | None,
        max_frames: int | None,
        do_sample: bool,
    ) -> Rules:
        """The rules the reference engine's `generate()` call uses for `model` (see `checkpoint_sampling`).

        `frames_per_sentence` forbids every non-audio id and makes each sentence exactly that many frames long;
        `max_frames` caps a sentence like `max_new_tokens` would.
        """
        generation = model.generation_config
        codebooks = model.decoder.config.num_codebooks
        eos = generation.eos_token_id
        min_new, temperature = checkpoint_sampling(generation)
        if frames_per_sentence is None:
            max_length = generation.max_length
        else:
            max_length = frames_per_sentence + codebooks
            min_new = max_length - 1
        if max_frames is not None:
            max_length = min(max_length, max_frames + codebooks)
        start = generation.decoder_start_token_id
        return cls(
            num_codebooks=codebooks,
            codebook_size=model.config.audio_encoder.codebook_size,
            start_id=generation.bos_token_id if start is None else start,
            bos_id=generation.bos_token_id,
            pad_id=generation.pad_token_id,
            eos_id=eos[0] if isinstance(eos, list) else eos,
            max_length=max_length,
            min_new_tokens=min_new,
            min_length=generation.min_length or 0,
            audio_only=frames_per_sentence is not None,
            do_sample=do_sample,
            temperature=temperature,
            top_k=generation.top_k or 0,
            top_p=generation.top_p if generation.top_p is not None else 1.0,
        )

    def scores(
        self, logits: torch.Tensor, columns: torch.Tensor, finished: torch.Tensor, first_open: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Processed fp32 scores of `(n, codebooks, vocab)` logits and the rows' new `first_open` codebooks.

        `columns` (n,) is the index of the column each row was just fed (0 = BOS), `finished` (n, codebooks)
        marks codebooks that emitted EOS, `first_open` (n,) is `ParlerTTSLogitsProcessor`'s first unfinished one.
        """
        scores = logits.clone()
        eos = scores[..., self.eos_id]
        eos.masked_fill_(((columns < self.min_new_tokens) | (columns + 1 < self.min_length))[:, None], -torch.inf)
        rows = torch.arange(len(columns), device=columns.device)
        first_open = first_open + (finished[rows, first_open] & (first_open < self.num_codebooks - 1)).long()
        codebooks = torch.arange(self.num_codebooks, device=columns.device)
        eos.masked_fill_(codebooks[None] > first_open[:, None], -torch.inf)
        scores[..., self.eos_id] = eos
        if self.audio_only:
            scores[..., self.codebook_size :] = -torch.inf
        if self.do_sample:
            scores = self._warp(scores)
        return scores, first_open

    def _warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and top-p as `generate()` applies them when sampling."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, dim=-1)
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[..., -1] = False
            scores = scores.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
        return scores

    def choose(self, scores: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Next ids: the argmax (greedy), or a sample per row by the exponential race on that row's own noise.

        `argmax(score - log E)` with `E ~ Exp(1)` is a draw from `softmax(score)` (the Gumbel-max trick).
        """
        return scores.argmax(-1) if noise is None else (scores - noise.log()).argmax(-1)

    def close(
        self, chosen: torch.Tensor, columns: torch.Tensor, finished: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The new column of each row after the delay pattern, the new `finished`, and which rows are done.

        A finished codebook gets padding; column `t` of codebook k is BOS while `t <= k` and padding from
        `max_length - codebooks + 1 + k` on. A row is done when every codebook has emitted EOS or the sequence
        reaches `max_length`.
        """
        chosen = torch.where(finished, self.pad_id, chosen)
        finished = finished | (chosen == self.eos_id)
        column = (columns + 1)[:, None]
        codebooks = torch.arange(self.num_codebooks, device=columns.device)[None]
        masked = torch.where(column <= codebooks, self.bos_id, chosen)
        masked = torch.where(column >= self.max_length - self.num_codebooks + 1 + codebooks, self.pad_id, masked)
        done = finished.all(-1) | (columns + 2 >= self.max_length)
        return masked, finished, done
