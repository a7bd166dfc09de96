"""The CPU decoder step, path by path: what the load-time choice (`audio.speech.cpu_path`) weighs, and where a
step's time goes.

For each path the processor supports (fp32 `nn.Linear`, oneDNN-packed fp32, int8 dynamic, bf16 where native),
on the same random-weight model: one batch-1 step attending to 256 positions (best of interleaved rounds, as at
load), the same step's linear layers alone (each called back to back on the input it got in the step: the matrix
products) and the rest (attention over the static cache, norms, embeddings, per-op dispatch); then the
`torch.profiler` table of one path's step. Other work on the machine only adds time, so best-of figures are
the ones to compare; the load is printed with them.

    python -m bench.cpu_step --arch mini --paths fp32,packed,int8,bf16 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from audio.speech import TTSConfig
from audio.speech.cpu_path import PATHS, build_path, native_bf16, time_steps
from audio.speech.decoder import ParlerDecoder
from audio.speech.parler import load_parler
from tests.fakes.tiny_parler import build_parler

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def processor() -> dict[str, Any]:
    """The CPU model, the flags that decide the paths, cores and load: what every CPU figure is recorded with."""
    info = dict(
        line.split(":", 1)
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        if ":" in line
    )
    flags = set(info.get("Flags", "").split())
    return {
        "cpu": info.get("Model name", "?").strip(),
        "flags": [flag for flag in FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def linear_ms(decoder: ParlerDecoder, rounds: int, clock: Callable[[], float]) -> float:
    """Milliseconds of one step's linear layers alone: each called on the input it received in the step."""
    calls: list[tuple[torch.nn.Module, torch.Tensor]] = []
    layers = [
        module
        for module in decoder.decoder.modules()
        if hasattr(module, "in_features") or isinstance(module, torch.nn.Linear)
    ]
    layers += [module for module in decoder._lm_heads.modules() if hasattr(module, "in_features")]
    hooks = [layer.register_forward_hook(lambda m, args, out: calls.append((m, args[0]))) for layer in layers]
    cache = decoder.cache
    tokens = torch.zeros(1, decoder.num_codebooks, dtype=torch.long)
    positions = torch.full((1, 1), cache.length - 1)
    with torch.inference_mode():
        decoder.step(tokens, positions, cache.length, cache.context)
        for hook in hooks:
            hook.remove()
        best = float("inf")
        for _ in range(rounds):
            started = clock()
            for module, x in calls:
                module(x)
            best = min(best, clock() - started)
    return best * 1000


def profile_table(decoder: ParlerDecoder, steps: int = 5, rows: int = 15) -> str:
    """`torch.profiler`'s table (self CPU time by op) over `steps` batch-1 steps."""
    cache = decoder.cache
    tokens = torch.zeros(1, decoder.num_codebooks, dtype=torch.long)
    positions = torch.full((1, 1), cache.length - 1)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            decoder.step(tokens, positions, cache.length, cache.context)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "mini"], default="tiny")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated; bf16 only where native")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--profile", default=None, help="the path to profile (default: the fastest)")
    parser.add_argument("--unfused", default="", help="paths also timed without fused projections (e.g. int8,bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time, which a loaded machine does not inflate (use with --threads 1)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p for p in args.paths.split(",") if p != "bf16" or native_bf16()]
    paths += [f"{p}/unfused" for p in args.unfused.split(",") if p and p in paths and p != "fp32"]

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_parler(TTSConfig(model=str(build_parler(Path(tmp) / args.arch, args.arch)), device="cpu"))
    decoders = {}
    for name in paths:
        started = time.perf_counter()
        base, _, unfused = name.partition("/")
        layers = build_path(model.decoder, base, max_batch=8, fuse=not unfused)
        decoders[name] = ParlerDecoder(model, rows=1, length=256, context=16, layers=layers)
        print(f"{name}: built in {time.perf_counter() - started:.1f} s")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    steps = time_steps(decoders, rounds=args.rounds, clock=clock)
    result: dict[str, Any] = {"arch": args.arch, "clock": args.clock, **processor(), "paths": {}}
    for name, decoder in decoders.items():
        matmul = linear_ms(decoder, args.rounds, clock)
        result["paths"][name] = {
            "step_ms": round(steps[name], 2),
            "linear_ms": round(matmul, 2),
            "other_ms": round(steps[name] - matmul, 2),
            "speedup": round(steps["fp32"] / steps[name], 2) if "fp32" in steps else None,
        }
        print(f"{name:>13}: {result['paths'][name]}")
    profiled = args.profile or min(steps, key=steps.__getitem__)
    print(f"profile of the {profiled} step (5 steps):")
    print(profile_table(decoders[profiled]))
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
