"""Remote speech benchmark: the engine in process against the same engine behind the local Ray Serve app.

Both sides run the same random-weight checkpoint (`tiny` or `mini`, see `tests.fakes.tiny_parler`), default
`TTSConfig`, text, voice and seed, with sampling masked to audio codes so every run is exactly `--seconds` long.
The remote side is what the bot does with `TTS_BASE_URL`: `RemoteEngine` → HTTP on loopback → Serve's proxy →
the replica's scheduler and engine (one replica, as many CPUs and torch threads as this process). Runs alternate
(in process, remote, in process, …) after one warm-up each. Per side: median time to first audio (TTFA) and
real-time factor (wall time / audio length); `remote_overhead_ms` is the difference of the TTFA medians.

Both engines note when each answer reached them and when their first chunk was ready (one monotonic clock for all
processes), so the remote TTFA splits into `inbound_ms` (client → proxy → replica → engine), `engine_ms` (the
engine's own TTFA, in the replica's process) and `outbound_ms` (first chunk → replica → proxy → client);
`remote_path_ms` is the median of inbound plus outbound: what the remote path adds apart from the model, whose
own TTFA varies far more than the path on a loaded machine.
With `--json` the last line is one JSON object.

    python -m bench.remote_tts --arch tiny --seconds 1 --runs 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio.speech import DEFAULT_VOICE, SpeechEngine, TTSConfig, Voice
from audio.speech.remote import RemoteConfig, RemoteEngine
from audio.speech.server import SpeechServer
from tests.fakes.speech_app import local_speech_app
from tests.fakes.tiny_parler import build_parler

TEXT = "Reply hazy, try again."
FRAMES_ENV = "BENCH_REMOTE_FRAMES"  # tells the replica's engine factory the answer length
MARKS_ENV = "BENCH_REMOTE_MARKS"  # the file where each engine appends "<called> <first chunk>" per answer


class MarkedServer(SpeechServer):
    """The serving engine, noting (monotonic clock) when each answer reached it and when its first chunk was ready."""

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None, **options: Any) -> Any:
        called = time.monotonic()
        first = True
        for chunk in super().stream(text, voice, cancel, **options):
            if first:
                first = False
                with open(os.environ[MARKS_ENV], "a") as marks:
                    marks.write(f"{called} {time.monotonic()}\n")
            yield chunk


def fixed_length_engine(config: TTSConfig) -> SpeechServer:
    """The engine on both sides: default chunking, exactly `BENCH_REMOTE_FRAMES` codec frames per sentence."""
    return MarkedServer.load(config, frames_per_sentence=int(os.environ[FRAMES_ENV]))


def last_marks() -> tuple[float, float]:
    """When the last answer reached an engine, and when its first chunk was ready."""
    with open(os.environ[MARKS_ENV]) as marks:
        called, first = marks.read().split()[-2:]
    return float(called), float(first)


def timed(chunks: Iterator[np.ndarray]) -> tuple[float, float, np.ndarray, dict[str, float]]:
    """TTFA and total wall time in seconds, the audio, and the TTFA split (see the module docstring), in ms."""
    start = time.monotonic()
    first = None
    parts = []
    for chunk in chunks:
        if first is None:
            first = time.monotonic()
        parts.append(chunk)
    end = time.monotonic()
    first = first or end
    called, ready = last_marks()
    split = {"inbound_ms": called - start, "engine_ms": ready - called, "outbound_ms": first - ready}
    return first - start, end - start, np.concatenate(parts), {k: 1000 * v for k, v in split.items()}


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference - test) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


Result = tuple[float, float, np.ndarray, dict[str, float]]


def measure(engine: SpeechEngine, runs: int) -> list[Result]:
    return [timed(engine.stream(TEXT, DEFAULT_VOICE)) for _ in range(runs)]


def summary(results: list[Result], sample_rate: int) -> dict[str, float]:
    seconds = results[0][2].size / sample_rate
    ttfa = [1000 * r[0] for r in results]
    return {
        "ttfa_ms": round(statistics.median(ttfa), 1),
        "ttfa_spread_ms": round(max(ttfa) - min(ttfa), 1),
        "rtf": round(statistics.median(r[1] for r in results) / seconds, 3),
        **{name: round(statistics.median(r[3][name] for r in results), 1) for name in results[0][3]},
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
        os.environ[MARKS_ENV] = str(Path(folder) / "marks")
        local = fixed_length_engine(config)
        path = local.cpu_path.path if local.cpu_path else "fp32"  # the replica decodes as the local engine chose
        with local_speech_app(model, engine_factory=fixed_length_engine, cpus=threads, cpu_path=path) as url:
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
    result["remote_path_ms"] = round(statistics.median(r[3]["inbound_ms"] + r[3]["outbound_ms"] for r in served), 1)
    for side in ("in_process", "remote"):
        print(f"{side:>10}: TTFA {result[side]['ttfa_ms']:7.1f} ms   RTF {result[side]['rtf']:.3f}")
    print(f"remote overhead: {result['remote_overhead_ms']} ms added to the first audio; SNR {result['snr_db']} dB")
    print(f"remote path (request to engine, first chunk to client): {result['remote_path_ms']} ms")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
