"""The CPU decoding path, chosen by measurement when the server loads.

Which kernels make a Parler-TTS decoder step fastest depends on the processor: oneDNN-packed fp32 weights beat
`nn.Linear` on one AMD EPYC and lose on an Intel Xeon with AMX, where bf16 runs natively. So at load every path
the processor supports is built as a copy of the decoder (sharing the weights it does not change), checked against
plain fp32 and timed at batch 1, interleaved; the fastest one that passes replaces the model's decoder.

- `fp32`: `nn.Linear` as loaded; bit for bit what `generate()` computes (tests comparing codes force it).
  The other paths also fuse each self-attention's query, key and value products, and the codebooks' heads, into
  one product each (`fuse_projections`).
- `packed`: oneDNN-packed fp32 weights (`PackedLinear`, private oneDNN ops): each distinct layer shape must match
  `F.linear` at 1 and `max_batch` rows, or the path is dropped with the reason.
- `int8`: dynamic int8 linear layers; a candidate only with `TTS_QUANTIZE=int8` (it changes the output).
- `bf16`: the decoder in bfloat16, a candidate where the CPU has native bf16 (AMX or AVX512-BF16 flags).

`int8` and `bf16` must keep the mean cosine similarity of their logits to fp32's at `MIN_COSINE` or above over a
short teacher-forced trace. `TTS_CPU_PATH` forces one path (no timing; the packed shape check still applies).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from parler_tts import ParlerTTSForCausalLM, ParlerTTSForConditionalGeneration
from torch.nn import functional as F

from audio.speech.decoder import ParlerDecoder
from audio.speech.parler import PackedLinear, can_pack, fuse_projections, pack_linears, quantize_int8
from audio.speech.voice import TTSConfig

log = logging.getLogger(__name__)

PATHS = ("fp32", "packed", "int8", "bf16")
MIN_COSINE = 0.99
"""The least mean logits cosine (against plain fp32) that `int8` and `bf16` must keep."""
TRACE_STEPS = 8
TIMED_LENGTH = 256
"""Attention length of the timed steps (a two-second answer's prompt and frames)."""
CONTEXT = 16
ROUNDS = 6
STEPS_PER_ROUND = 1


@dataclass
class PathChoice:
    """What the load-time choice picked: step times at batch 1 (ms), logits cosines, and why paths were dropped."""

    path: str
    forced: bool = False
    step_ms: dict[str, float] = field(default_factory=dict)
    cosine: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    """How long building, checking and timing the paths took."""

    @property
    def speedup(self) -> float | None:
        """Plain fp32 step ÷ the chosen path's step (same run), when both were timed."""
        if "fp32" not in self.step_ms or self.path not in self.step_ms:
            return None
        return self.step_ms["fp32"] / self.step_ms[self.path]

    def describe(self) -> str:
        """One log line: the path, how it was chosen, the step times, cosines and any fallback reasons."""
        how = "measured" if not self.forced else "forced by TTS_CPU_PATH" if self.path in PATHS else "as loaded"
        parts = [f"CPU decoding path: {self.path} ({how})"]
        if self.step_ms:
            times = ", ".join(f"{name} {ms:.1f}" for name, ms in self.step_ms.items())
            parts.append(f"step ms at batch 1: {times}")
        if self.cosine:
            parts.append("logits cosine to fp32: " + ", ".join(f"{n} {c:.4f}" for n, c in self.cosine.items()))
        parts.extend(f"{name} not used: {reason}" for name, reason in self.rejected.items())
        if self.seconds is not None:
            parts.append(f"chosen in {self.seconds:.1f} s")
        return "; ".join(parts)


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bf16 natively (AMX or AVX512-BF16), from the kernel's CPU flags."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def candidates(config: TTSConfig) -> list[str]:
    """The paths worth timing on this processor for `config` (fp32 first: the reference)."""
    paths = ["fp32", "packed"]
    if config.quantize == "int8":
        paths.append("int8")
    if native_bf16():
        paths.append("bf16")
    return paths


def choose_cpu_path(model: ParlerTTSForConditionalGeneration, config: TTSConfig, *, max_batch: int) -> PathChoice:
    """Give `model` the decoder of the chosen path (see the module docstring) and say what was chosen. Blocking.

    Models whose decoder is not fp32 on the CPU (e.g. `TTS_DTYPE=bfloat16`) run as loaded.
    """
    if (config.cpu_path != "auto" or config.quantize == "int8") and model.device.type != "cpu":
        raise ValueError("TTS_CPU_PATH and TTS_QUANTIZE=int8 are for the CPU; GPUs run bf16.")
    dtype = next(model.decoder.parameters()).dtype
    if model.device.type != "cpu" or dtype != torch.float32:
        return PathChoice(str(dtype).removeprefix("torch."), forced=True)
    started = time.monotonic()
    forced = config.cpu_path != "auto"
    names = [config.cpu_path] if forced else candidates(config)
    choice = PathChoice("fp32", forced=forced)
    built: dict[str, ParlerTTSForCausalLM] = {}
    for name in names:
        try:
            built[name] = build_path(model.decoder, name, max_batch)
        except Exception as exc:  # private or missing kernels: this path is not for this machine
            choice.rejected[name] = str(exc) or type(exc).__name__
    if not forced and len(built) > 1:
        _measure(model, built, choice)
    elif built:
        choice.path = next(iter(built))
    model.decoder = built.get(choice.path, model.decoder)
    choice.seconds = time.monotonic() - started
    return choice


def build_path(decoder: ParlerTTSForCausalLM, name: str, max_batch: int, *, fuse: bool = True) -> ParlerTTSForCausalLM:
    """`decoder` for path `name`: itself for fp32, else a copy sharing every tensor the path leaves as it is
    (`fuse=False` keeps the separate projections: benchmarks compare)."""
    if name == "fp32":
        return decoder
    if name == "bf16":
        variant = _copy(decoder, lambda tensor: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor)
    else:
        variant = _copy(decoder, lambda tensor: tensor)
    if fuse:
        fuse_projections(variant)
    if name == "bf16":
        return variant
    if name == "int8":
        quantize_int8(variant)
        return variant
    if not can_pack(decoder):
        raise RuntimeError("torch has no oneDNN linear kernels here")
    originals = dict(variant.named_modules())
    pack_linears(variant)
    checked: set[tuple[int, int, bool]] = set()
    for module_name, module in variant.named_modules():
        if not isinstance(module, PackedLinear):
            continue
        shape = (module.in_features, module.out_features, module.bias is not None)
        if shape not in checked:
            checked.add(shape)
            _check_packed(originals[module_name], module, (1, max_batch))
    return variant


def _copy(module: torch.nn.Module, convert: Callable[[torch.Tensor], torch.Tensor]) -> ParlerTTSForCausalLM:
    """A copy of `module`'s structure whose parameters and buffers are `convert(tensor)` (shared when unchanged)."""
    memo: dict[int, object] = {}
    for parameter in module.parameters():
        tensor = parameter.detach()
        converted = convert(tensor)
        memo[id(parameter)] = parameter if converted is tensor else torch.nn.Parameter(converted, False)
    for buffer in module.buffers():
        memo[id(buffer)] = convert(buffer)
    return copy.deepcopy(module, memo)


def _check_packed(linear: torch.nn.Linear, packed: PackedLinear, rows: tuple[int, ...]) -> None:
    """Raise when `packed` does not compute `F.linear` of the original weights at each row count."""
    generator = torch.Generator().manual_seed(0)
    for count in rows:
        x = torch.randn(count, 1, linear.in_features, generator=generator)
        with torch.inference_mode():
            expected, got = F.linear(x, linear.weight, linear.bias), packed(x)
        error = float((got - expected).abs().max()) / max(float(expected.abs().max()), 1e-6)
        if got.shape != expected.shape or not error <= 1e-4:
            raise RuntimeError(
                f"oneDNN's packed {linear.in_features}x{linear.out_features} layer differs from F.linear at "
                f"{count} rows (relative error {error:.2g})"
            )


def _measure(
    model: ParlerTTSForConditionalGeneration, built: dict[str, ParlerTTSForCausalLM], choice: PathChoice
) -> None:
    """Check each path's logits against fp32, time them interleaved, and pick the fastest that passes."""
    decoders = {
        name: ParlerDecoder(model, rows=1, length=TIMED_LENGTH, context=CONTEXT, layers=layers)
        for name, layers in built.items()
    }
    reference = logits_trace(decoders["fp32"], model, None)
    forced = reference.argmax(-1)
    for name, decoder in list(decoders.items()):
        if name == "fp32":
            continue
        try:
            trace = logits_trace(decoder, model, forced)
        except Exception as exc:  # a kernel that builds but cannot run a step here
            choice.rejected[name] = str(exc) or type(exc).__name__
            del decoders[name]
            continue
        if name == "packed":  # checked layer by layer against F.linear
            continue
        cosine = float(F.cosine_similarity(trace, reference, dim=-1).mean())
        choice.cosine[name] = round(cosine, 4)
        if not cosine >= MIN_COSINE:
            choice.rejected[name] = f"logits cosine {cosine:.4f} to fp32 is under {MIN_COSINE}"
            del decoders[name]
    times = time_steps(decoders)
    choice.step_ms = {name: round(ms, 2) for name, ms in times.items()}
    choice.path = min(times, key=times.__getitem__)


def time_steps(
    decoders: dict[str, ParlerDecoder], rounds: int = ROUNDS, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Milliseconds per batch-1 step of each decoder, attending to its whole cache: the best of `rounds` rounds
    that visit the decoders in turn (other work on the machine only ever adds time). `clock` may be the
    process's CPU time, for benchmarks on a shared machine."""
    best = dict.fromkeys(decoders, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds):
            for name, decoder in decoders.items():
                cache = decoder.cache
                cache.prepare(cache.length, cache.context)
                tokens = torch.zeros(1, decoder.num_codebooks, dtype=torch.long)
                positions = torch.full((1, 1), cache.length - 1)
                started = clock()
                for _ in range(STEPS_PER_ROUND):
                    decoder.step(tokens, positions, cache.length, cache.context)
                best[name] = min(best[name], (clock() - started) / STEPS_PER_ROUND * 1000)
    return best


def logits_trace(
    decoder: ParlerDecoder,
    model: ParlerTTSForConditionalGeneration,
    forced: torch.Tensor | None,
    steps: int = TRACE_STEPS,
    prompt: torch.Tensor | None = None,
    description: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 logits `(steps, codebooks, vocab)` of one row: a prompt prefill, then steps fed the greedy ids or
    `forced` ones. Without `prompt` and `description` ids, fixed pseudo-random ones (no tokenizer needed)."""
    generator = torch.Generator().manual_seed(0)
    if description is None:
        description = torch.randint(3, model.text_encoder.config.vocab_size, (1, CONTEXT), generator=generator)
    if prompt is None:
        prompt = torch.randint(3, model.config.vocab_size, (1, 16), generator=generator)
    start_id = model.generation_config.decoder_start_token_id
    if start_id is None:
        start_id = model.generation_config.bos_token_id
    cache = decoder.cache
    with torch.inference_mode():
        voice = decoder.encode(description, torch.ones_like(description))
        cache.prepare(cache.length, cache.context)
        cache.load_voice(0, voice)
        start = torch.full((1, decoder.num_codebooks), start_id, dtype=torch.long)
        hidden = torch.cat([decoder.prompt(prompt), decoder.embed(start)], dim=1)
        tokens = prompt.shape[-1] + 1
        logits = [decoder.forward(hidden, torch.arange(tokens)[None], 0, cache.length, voice.length)[0]]
        for step in range(steps - 1):
            ids = forced[step] if forced is not None else logits[-1].argmax(-1)
            positions = torch.tensor([[tokens + step]])
            logits.append(decoder.step(ids[None], positions, cache.length, voice.length)[0])
    return torch.stack(logits)
