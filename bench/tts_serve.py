"""Speech serving benchmark: the batched server against the one-at-a-time `generate()` engine.

Same machine, same run, the same random-weight model as `bench.tts_stream` (`tiny` or `mini`), sampling masked to
audio codes so every answer is exactly `--seconds` long; one sentence per answer, each with its own seed.

- `decoder_ratio`: decoder steps per second summed over `max(--streams)` concurrent answers in the server
  (codec replaced by silence) ÷ steps per second of `generate()` at batch 1 (its codec time subtracted).
- `throughput_ratio`: audio seconds per wall second for those answers, server (codec included) ÷ the reference
  engine one answer at a time (it serves answers serially, so n answers take n times one); `codec_share` is the
  share of the server's wall time spent in the codec. The same with int8 decoder weights on CPU.
- `ttfa_ratio_concurrent`: p95 time to first audio of 4 answers submitted at once, reference ÷ server (the
  reference's k-th answer starts after k-1 whole answers).
- `solo_speedup`: decoder steps per second of the server at batch 1 ÷ `generate()` at batch 1 (on CPU the server
  runs the decoder on the path `SpeechServer.load` measured fastest, int8 allowed; `generate()` runs the model as
  `from_pretrained` gives it).
- `cpu_path`: the path that load-time choice picked (fp32, packed, int8 or bf16; `audio.speech.cpu_path`), with
  `cpu_path_step_ms` (its interleaved batch-1 timings of every candidate) and `chosen_speedup`: plain fp32 step ÷
  the chosen path's step, from those same timings. `processor`: the CPU model, its deciding flags and the load.
- `int8_speedup`: decoder step time fp32 (`nn.Linear`, as loaded: `step_ms_plain_1`) ÷ int8 at batch 1 (CPU);
  `int8_speedup_vs_chosen`: the server's step on its load-time path (`cpu_path`) ÷ int8; with the
  cosine similarity and top-1 agreement of their logits over 200 steps, teacher-forced on the fp32 greedy ids.
- `step_ms`: one decoder step per batch size; `rtf`: wall ÷ audio seconds per answer, per stream count.

    python -m bench.tts_serve --arch tiny --streams 1,2,4,8 --seconds 2 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio.speech import DEFAULT_VOICE, TTSConfig, Voice, cpu_path
from audio.speech.decoder import ParlerDecoder
from audio.speech.parler import (
    fold_weight_norm,
    quantize_int8,
)
from audio.speech.reference import TTSEngine
from audio.speech.server import DESCRIPTION_TOKENS, PROMPT_TOKENS, SpeechServer, codec_call
from audio.speech.slots import bucket, length_buckets
from bench.cpu_step import processor
from bench.tts_stream import TEXT, DecodeTimer, _collect
from tests.fakes.tiny_parler import build_parler

TRACE_STEPS = 200
CONCURRENT = 4


class SwitchableCodec:
    """The server's production codec call (`codec_call`: on CUDA, a stream of its own), or silence of the right
    length to time the decoder alone."""

    def __init__(self, engine: TTSEngine) -> None:
        self.decode = codec_call(engine.model)
        self.silent = False
        self.hop = round(engine.sample_rate / engine.frame_rate)

    def __call__(self, codes: torch.Tensor) -> list[np.ndarray]:
        if self.silent:
            return [np.zeros(codes.shape[-1] * self.hop, np.float32) for _ in range(codes.shape[0])]
        return self.decode(codes)


@dataclass
class Batch:
    wall_s: float
    ttfa_s: list[float]
    codec_s: float


def run_batch(server: SpeechServer, timer: DecodeTimer, streams: int) -> Batch:
    """`streams` answers submitted at once (seeds 1..n); wall time until the last chunk of the last one."""
    timer.take()
    start = time.perf_counter()

    def one(seed: int) -> float:
        ttfa, _ = _collect(server.stream(TEXT, Voice(DEFAULT_VOICE.description, seed)), start)
        return ttfa

    with ThreadPoolExecutor(streams) as pool:
        ttfa = list(pool.map(one, range(1, streams + 1)))
    return Batch(time.perf_counter() - start, ttfa, timer.take())


def generate_step_rate(engine: TTSEngine, timer: DecodeTimer, steps: int) -> tuple[float, float, float]:
    """`generate()` at batch 1: decoder steps per second (codec excluded), wall and TTFA of the streamed engine."""
    kwargs = engine.generate_kwargs(TEXT, DEFAULT_VOICE)
    torch.manual_seed(DEFAULT_VOICE.seed)
    timer.take()
    start = time.perf_counter()
    engine.model.generate(**kwargs)
    decoder_s = time.perf_counter() - start - timer.take()
    start = time.perf_counter()
    ttfa, _ = _collect(engine.stream(TEXT, DEFAULT_VOICE), start)
    return steps / decoder_s, time.perf_counter() - start, ttfa


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_ms(server: SpeechServer, sizes: list[int], prompt: int, frames: int, repeats: int = 5) -> dict[str, float]:
    """One decoder step (through the server's runner: CUDA graphs on GPU) per batch size, attention over an
    answer's full length. The server must be idle."""
    loop, device = server.loop, server.device
    length = bucket(prompt + frames + server.rules.num_codebooks, length_buckets(server.decoder.cache.length))
    context = bucket(32, length_buckets(server.decoder.cache.context, 16))
    result = {}
    with torch.inference_mode():
        for size in sizes:
            tokens = torch.zeros(size, server.rules.num_codebooks, dtype=torch.long, device=device)
            positions = torch.full((size, 1), length - 1, dtype=torch.long, device=device)
            loop.runner(tokens, positions, length, context)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                loop.runner(tokens, positions, length, context)
            synchronize(device)
            result[str(size)] = round((time.perf_counter() - start) / repeats * 1000, 2)
    return result


def logits_trace(engine: TTSEngine, forced: torch.Tensor | None) -> torch.Tensor:
    """`TRACE_STEPS` steps of fp32 logits `(steps, codebooks, vocab)` at batch 1; greedy, or fed `forced` ids."""
    model, tokenizer = engine.model, engine.tokenizer
    decoder = ParlerDecoder(model, rows=1, length=PROMPT_TOKENS + TRACE_STEPS + 1, context=DESCRIPTION_TOKENS)
    description = tokenizer(DEFAULT_VOICE.description, return_tensors="pt").input_ids
    prompt = tokenizer(TEXT, return_tensors="pt").input_ids
    return cpu_path.logits_trace(decoder, model, forced, TRACE_STEPS, prompt, description)


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "mini"], default="tiny")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrent answers, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each answer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    streams = sorted({int(s) for s in args.streams.split(",")})
    most = streams[-1]

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = build_parler(Path(tmp) / args.arch, args.arch)
        config = TTSConfig(
            model=str(path),
            device=args.device,
            max_batch=max(most, CONCURRENT),
            quantize="int8" if args.device == "cpu" else "none",
        )
        probe = TTSEngine.load(config, frames_per_sentence=8)
        print(f"built and loaded {args.arch} in {time.perf_counter() - started:.1f} s on {probe.device}")
        device = probe.device
        fold_weight_norm(probe.model.audio_encoder)  # both engines use the folded codec
        frames = round(args.seconds * probe.frame_rate)
        steps = frames + probe.model.decoder.config.num_codebooks - 1
        audio_s = frames / probe.frame_rate
        # The reference runs the model as `from_pretrained` gives it; the server loads its own copy as the bot does
        # (CPU: oneDNN-packed decoder weights), decoding audio with the reference's folded codec.
        reference = TTSEngine(config, probe.model, probe.tokenizer, frames_per_sentence=frames)
        timer = DecodeTimer(reference)
        codec = SwitchableCodec(reference)
        started = time.perf_counter()
        server = SpeechServer.load(config, frames_per_sentence=frames, decode=codec)
    print(f"server loaded in {time.perf_counter() - started:.1f} s (max batch {server.max_streams})")
    prompt_tokens = probe.tokenizer(TEXT, return_tensors="pt").input_ids.shape[-1]

    run_batch(server, timer, 1)  # warm-up
    generate_rate, reference_wall, reference_ttfa = generate_step_rate(reference, timer, steps)
    print(f"generate(): {generate_rate:.1f} steps/s; reference engine {reference_wall:.2f} s per answer")

    codec.silent = True
    solo = run_batch(server, timer, 1)
    batch = run_batch(server, timer, most)
    codec.silent = False
    server_rate = most * steps / batch.wall_s
    print(f"server, codec off: {steps / solo.wall_s:.1f} steps/s alone, {server_rate:.1f} with {most} answers")

    runs = {n: run_batch(server, timer, n) for n in sorted({*streams, CONCURRENT})}
    for n, run in runs.items():
        ttfa = p95(run.ttfa_s)
        print(f"{n:>3} answers: wall {run.wall_s:6.2f} s, p95 ttfa {ttfa:5.2f} s, codec {run.codec_s:5.2f} s")
    step_times = step_ms(server, sorted({1, *streams}), prompt_tokens, frames)
    print(f"step ms: {step_times}")

    def throughput(run: Batch, n: int) -> float:
        return (n * audio_s / run.wall_s) / (audio_s / reference_wall)

    ttfa_reference = [k * reference_wall + reference_ttfa for k in range(CONCURRENT)]
    result: dict[str, Any] = {
        "arch": args.arch,
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(server.decoder.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "seconds": args.seconds,
        "streams": most,
        "decoder_ratio": round(server_rate / generate_rate, 2),
        "throughput_ratio": round(throughput(runs[most], most), 2),
        "codec_share": round(runs[most].codec_s / runs[most].wall_s, 2),
        "ttfa_ratio_concurrent": round(p95(ttfa_reference) / p95(runs[CONCURRENT].ttfa_s), 2),
        "ttfa_s": {str(n): round(p95(run.ttfa_s), 3) for n, run in runs.items()},
        "solo_speedup": round((steps / solo.wall_s) / generate_rate, 2),
        "step_ms": step_times,
        "rtf": {str(n): round(run.wall_s / audio_s, 2) for n, run in runs.items()},
        "int8_speedup": None,
    }
    if server.cpu_path is not None and device.type == "cpu":
        speedup = server.cpu_path.speedup
        result.update(
            processor=processor(),
            cpu_path=server.cpu_path.path,
            cpu_path_step_ms=server.cpu_path.step_ms,
            cpu_path_seconds=round(server.cpu_path.seconds or 0, 1),
            chosen_speedup=None if speedup is None else round(speedup, 2),
        )
    if device.type == "cpu":
        server.close()
        del server  # its model copy
        plain = SpeechServer(
            replace(config, max_batch=1), probe.model, probe.tokenizer, frames_per_sentence=frames, decode=codec
        )
        plain_step = step_ms(plain, [1], prompt_tokens, frames)["1"]  # fp32 `nn.Linear`, as loaded
        plain.close()
        fp32_logits = logits_trace(reference, None)
        quantize_int8(probe.model.decoder)
        int8_logits = logits_trace(reference, fp32_logits.argmax(-1))
        server = SpeechServer(config, probe.model, probe.tokenizer, frames_per_sentence=frames, decode=codec)
        run_batch(server, timer, 1)
        int8_step = step_ms(server, [1], prompt_tokens, frames)["1"]
        int8_run = run_batch(server, timer, most)
        cosine = torch.nn.functional.cosine_similarity(fp32_logits, int8_logits, dim=-1)
        agree = (fp32_logits.argmax(-1) == int8_logits.argmax(-1)).float().mean()
        result.update(
            int8_speedup=round(plain_step / int8_step, 2),
            int8_speedup_vs_chosen=round(step_times["1"] / int8_step, 2),
            int8_cosine=round(float(cosine.mean()), 4),
            int8_top1_agreement=round(float(agree), 4),
            int8_throughput_ratio=round(throughput(int8_run, most), 2),
            int8_codec_share=round(int8_run.codec_s / int8_run.wall_s, 2),
            int8_step_ms=int8_step,
            step_ms_plain_1=plain_step,
        )
    server.close()
    print(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
