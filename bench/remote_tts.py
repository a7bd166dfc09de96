"""Remote speech benchmark: the engine in process against the same engine behind the local Ray Serve app.

Both sides run the same random-weight checkpoint (`tiny` or `mini`, see `tests.fakes.tiny_parler`), default
`TTSConfig`, text, voice and seed, with sampling masked to audio codes so every run is exactly `--seconds` long.
The remote side is what the bot does with `TTS_BASE_URL`: `RemoteEngine` → HTTP on loopback → Serve's proxy →
the replica's scheduler and engine (one replica, as many CPUs and torch threads as this process). Runs alternate
(in process, remote, in process, …) after one warm-up each. Per side: median time to first audio (TTFA) and
real-time factor (wall time / audio length); `remote_overhead_ms` is the difference of the TTFA medians.
With `--json` the last line is one JSON object.

    python -m bench.remote_tts --arch tiny --seconds 1 --runs 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from audio.speech import DEFAULT_VOICE, SpeechEngine, TTSConfig
from audio.speech.remote import RemoteConfig, RemoteEngine
from audio.speech.server import SpeechServer
from tests.fakes.speech_app import local_speech_app
from tests.fakes.tiny_parler import build_parler

TEXT = "Reply hazy, try again."
FRAMES_ENV = "BENCH_REMOTE_FRAMES"  # tells the replica's engine factory the answer length


def fixed_length_engine(config: TTSConfig) -> SpeechServer:
    """The engine on both sides: default chunking, exactly `BENCH_REMOTE_FRAMES` codec frames per sentence."""
    return SpeechServer.load(config, frames_per_sentence=int(os.environ[FRAMES_ENV]))


def timed(chunks: Iterator[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """TTFA and total wall time in seconds, and the audio."""
    start = time.perf_counter()
    first = None
    parts = []
    for chunk in chunks:
        if first is None:
            first = time.perf_counter() - start
        parts.append(chunk)
    return first or 0.0, time.perf_counter() - start, np.concatenate(parts)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference - test) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def measure(engine: SpeechEngine, runs: int) -> list[tuple[float, float, np.ndarray]]:
    return [timed(engine.stream(TEXT, DEFAULT_VOICE)) for _ in range(runs)]


def summary(results: list[tuple[float, float, np.ndarray]], sample_rate: int) -> dict[str, float]:
    seconds = results[0][2].size / sample_rate
    return {
        "ttfa_ms": round(1000 * statistics.median(r[0] for r in results), 1),
        "rtf": round(statistics.median(r[1] for r in results) / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["tiny", "mini"], default="tiny")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per answer")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (after one warm-up)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        model = build_parler(Path(folder), args.arch)
        config = TTSConfig(model=str(model))
        os.environ[FRAMES_ENV] = str(round(args.seconds * 44100 / 512))  # inherited by Ray's workers
        local = fixed_length_engine(config)
        with local_speech_app(model, engine_factory=fixed_length_engine, cpus=threads) as url:
            remote = RemoteEngine.connect(RemoteConfig(url, str(model), timeout=600))
            try:
                measure(local, 1)  # warm-up: caches, the HTTP connection
                measure(remote, 1)
                pairs = [(measure(local, 1)[0], measure(remote, 1)[0]) for _ in range(args.runs)]
            finally:
                remote.close()
    in_process = [p[0] for p in pairs]
    served = [p[1] for p in pairs]
    result = {
        "arch": args.arch,
        "device": str(local.device),
        "torch_threads": threads,
        "audio_s": round(in_process[0][2].size / local.sample_rate, 3),
        "runs": args.runs,
        "in_process": summary(in_process, local.sample_rate),
        "remote": summary(served, local.sample_rate),
        "snr_db": round(min(snr_db(a[2], b[2]) for a, b in pairs), 1),
    }
    result["remote_overhead_ms"] = round(result["remote"]["ttfa_ms"] - result["in_process"]["ttfa_ms"], 1)
    for side in ("in_process", "remote"):
        print(f"{side:>10}: TTFA {result[side]['ttfa_ms']:7.1f} ms   RTF {result[side]['rtf']:.3f}")
    print(f"remote overhead: {result['remote_overhead_ms']} ms added to the first audio; SNR {result['snr_db']} dB")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
