"""Parler-TTS plumbing shared by the engines: device and dtype choice, loading, prompts, codec decode."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from parler_tts import ParlerTTSForCausalLM, ParlerTTSForConditionalGeneration
from torch.ao.quantization import quantize_dynamic
from torch.nn.utils import parametrize
from transformers import AutoTokenizer, LogitsProcessor, PreTrainedTokenizerBase

from audio.speech.voice import TTSConfig

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class AudioCodesOnly(LogitsProcessor):
    """Forbid every id outside the codebook, EOS included: random-weight models then generate exact lengths."""

    def __init__(self, codebook_size: int) -> None:
        self.codebook_size = codebook_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.codebook_size :] = -math.inf
        return scores


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → bf16 on CUDA (fp16 where bf16 is missing), fp16 on MPS, fp32 on CPU."""
    if name != "auto":
        try:
            return _DTYPES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)} or 'auto'") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def load_parler(config: TTSConfig) -> tuple[ParlerTTSForConditionalGeneration, PreTrainedTokenizerBase]:
    """The model and tokenizer through `from_pretrained`, as on a user's machine. Blocking."""
    device = resolve_device(config.device)
    model = ParlerTTSForConditionalGeneration.from_pretrained(
        config.model,
        torch_dtype=resolve_dtype(config.dtype, device),
        # T5 has no SDPA/flash kernels in transformers 4.46: the choice applies to the decoder only.
        attn_implementation={"decoder": config.attn_implementation, "text_encoder": "eager"},
    ).to(device)
    return model, AutoTokenizer.from_pretrained(config.model)


def to_pcm(audio: torch.Tensor) -> np.ndarray:
    """Codec output → float32 mono samples in [-1, 1]. A fixed limiter, never a per-chunk normalisation."""
    samples = audio.detach().float().reshape(-1).cpu().numpy()
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def decode_codes(model: ParlerTTSForConditionalGeneration, codes: torch.Tensor) -> np.ndarray:
    """Decode `(num_codebooks, frames)` codes with the model's codec."""
    return decode_batch(model, codes[None])[0]


def decode_batch(model: ParlerTTSForConditionalGeneration, codes: torch.Tensor) -> list[np.ndarray]:
    """Decode `(batch, num_codebooks, frames)` codes with the model's codec in one call: one array per item."""
    codes = codes.to(model.audio_encoder.device)[None]  # (chunks, batch, codebooks, frames)
    if not model.use_4dim_audio_codes:
        codes = codes[0]
    scales = {"audio_scales": [None] * codes.shape[-3]} if model.use_audio_scales else {}
    with torch.inference_mode():
        audio = model.audio_encoder.decode(audio_codes=codes, **scales).audio_values
    return [to_pcm(item) for item in audio.reshape(codes.shape[-3], -1)]


def fold_weight_norm(module: torch.nn.Module) -> int:
    """Replace weight normalisation by the plain weight it computes (the DAC codec's convolutions); returns how many.

    At inference the normalised weight is a constant, so computing it once at load saves a norm per convolution
    per call.
    """
    folded = 0
    for child in module.modules():
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
            folded += 1
    return folded


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """int8 weights on the `nn.Linear` layers of `module` (CPU): torch's dynamic quantization.

    It runs fbgemm's int8 GEMM on x86 CPUs: weights are quantized once per output channel, activations per call,
    so the memory-bound decoder step reads a quarter of the fp32 bytes. torch marks this API deprecated in favour
    of torchao, but torchao 0.17 (the release for torch 2.11) has no eager CPU kernel for int8 dynamic activations:
    measured here, its `Int8DynamicActivationInt8WeightConfig` ran a 1024-4096-1024 pair of layers about 60 times
    slower than this (bench/RESULTS.md), fast only under `torch.compile`. The deprecation warning is silenced;
    should a later torch drop the API, the int8 path fails to build and the load-time choice falls back.
    """
    unpack_linears(module)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def fuse_projections(decoder: ParlerTTSForCausalLM) -> None:
    """Give `decoder` one linear layer per self-attention for its query, key and value projections (`qkv_proj`)
    and one for all codebooks' heads: fewer, larger matrix products per step, fewer dispatches and (int8) fewer
    activation quantizations. In place, for a copy served by `ParlerDecoder`: `generate()` needs the separate
    layers. Results equal the separate products up to rounding."""
    for layer in decoder.model.decoder.layers:
        attention = layer.self_attn
        attention.qkv_proj = _concatenated([attention.q_proj, attention.k_proj, attention.v_proj])
        del attention.q_proj, attention.k_proj, attention.v_proj
    if isinstance(decoder.lm_heads, torch.nn.ModuleList):
        decoder.lm_heads = _concatenated(list(decoder.lm_heads))


def _concatenated(linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """One `nn.Linear` computing `linears` side by side (outputs concatenated in order)."""
    first = linears[0]
    has_bias = any(linear.bias is not None for linear in linears)
    fused = torch.nn.utils.skip_init(
        torch.nn.Linear, first.in_features, sum(linear.out_features for linear in linears), bias=has_bias
    )
    with torch.no_grad():
        fused.weight = torch.nn.Parameter(torch.cat([linear.weight for linear in linears]), requires_grad=False)
        if has_bias:
            biases = [
                linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                for linear in linears
            ]
            fused.bias = torch.nn.Parameter(torch.cat(biases), requires_grad=False)
    return fused


class PackedLinear(torch.nn.Module):
    """A linear layer whose weight is held in oneDNN's blocked layout, for CPU decoding steps.

    The decoder step at a few rows is bound by reading the weights. Through `nn.Linear` the CPU BLAS reads them
    at about half the memory bandwidth (one row) or packs the whole matrix again on every call (2 to 8 rows);
    oneDNN's prepacked product streams them once. Measured on the Parler-TTS Mini decoder on 2 cores: a step
    takes 66 instead of 94 ms for one answer and 136 instead of 186 ms for eight (bench/RESULTS.md). The weight
    is kept only packed, so memory stays the same; `unpack` gives the `nn.Linear` back.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpack(self) -> torch.nn.Linear:
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.packed.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def can_pack(module: torch.nn.Module) -> bool:
    """Whether `PackedLinear` can serve `module`'s float32 CPU weights (torch built with oneDNN)."""
    weight = next(module.parameters())
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_linears(module: torch.nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear`; the number replaced."""
    return _replace(module, torch.nn.Linear, PackedLinear)


def unpack_linears(module: torch.nn.Module) -> int:
    """Give every `PackedLinear` inside `module` back as `nn.Linear`; the number replaced."""
    return _replace(module, PackedLinear, PackedLinear.unpack)


def _replace(module: torch.nn.Module, kind: type, build: Callable[[Any], torch.nn.Module]) -> int:
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is kind
    ]
    for parent, name, child in targets:
        setattr(parent, name, build(child))
    return len(targets)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for one request without disturbing the process's random state outside it."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield
