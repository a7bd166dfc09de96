"""Streaming TTS benchmark: this engine against parler-tts' reference `ParlerTTSStreamer`.

Both run on the same random-weight model (`tiny`: test architecture with the real DAC codec; `mini`: the
Parler-TTS Mini v1 architecture), text, seed and token count, with sampling masked to audio codes so every run
produces exactly the requested length. Per answer length it prints time to first audio (TTFA), total wall time
(until the model is free again) and codec decode time, for this engine and for the reference at 0.5 s chunks
(upstream's streaming example) and 2 s chunks (the original demo). With `--json` the last line is one JSON object.

    python -m bench.tts_stream --arch tiny --seconds 2,5,10 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from parler_tts import ParlerTTSStreamer

from audio.speech import DEFAULT_VOICE, TTSConfig
from audio.speech.reference import TTSEngine
from tests.fakes.tiny_parler import build_parler

TEXT = "Reply hazy, try again."
REFERENCE_CHUNKS_S = (0.5, 2.0)


@dataclass
class Run:
    ttfa_s: float
    wall_s: float
    decode_s: float
    audio: np.ndarray


class DecodeTimer:
    """Wraps the codec's `decode` to add up the time spent in it.

    On CUDA it waits for the calling thread's current stream only: the serving engine's codec runs on a stream of
    its own beside the decoder's steps, and a device-wide synchronisation would count (and stall on) those too.
    """

    def __init__(self, engine: TTSEngine) -> None:
        self.total = 0.0
        codec = engine.model.audio_encoder
        original = codec.decode
        cuda = engine.device.type == "cuda"

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            output = original(*args, **kwargs)
            if cuda:
                torch.cuda.current_stream(engine.device).synchronize()
            self.total += time.perf_counter() - start
            return output

        codec.decode = timed

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


def _collect(chunks: Iterator[np.ndarray], start: float) -> tuple[float, list[np.ndarray]]:
    """Drain `chunks`, returning the time of the first one after `start` and all of them."""
    first = None
    out = []
    for chunk in chunks:
        first = first if first is not None else time.perf_counter() - start
        out.append(np.asarray(chunk, np.float32).reshape(-1))
    return (first if first is not None else float("nan")), out


def run_ours(engine: TTSEngine, timer: DecodeTimer) -> Run:
    timer.take()
    start = time.perf_counter()
    ttfa, chunks = _collect(engine.stream(TEXT, DEFAULT_VOICE), start)
    return Run(ttfa, time.perf_counter() - start, timer.take(), np.concatenate(chunks))


def run_reference(engine: TTSEngine, timer: DecodeTimer, chunk_s: float) -> Run:
    """Upstream's recipe: `generate` in a thread with `ParlerTTSStreamer`, chunks of `chunk_s` seconds."""
    model = engine.model
    streamer = ParlerTTSStreamer(model, device=engine.device, play_steps=int(engine.frame_rate * chunk_s))
    kwargs = {**engine.generate_kwargs(TEXT, DEFAULT_VOICE), "streamer": streamer}
    torch.manual_seed(DEFAULT_VOICE.seed)
    timer.take()
    start = time.perf_counter()
    thread = threading.Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    ttfa, chunks = _collect(iter(streamer), start)
    thread.join()  # generate() decodes the whole answer once more before the model is free
    return Run(ttfa, time.perf_counter() - start, timer.take(), np.concatenate(chunks))


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    n = min(len(reference), len(test))
    noise = np.sum((reference[:n] - test[:n]) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference[:n] ** 2) / noise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "mini"], default="tiny")
    parser.add_argument("--seconds", default="2,5,10", help="answer lengths in seconds, comma-separated")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    lengths = [float(s) for s in args.seconds.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = build_parler(Path(tmp) / args.arch, args.arch)
        base = TTSEngine.load(TTSConfig(model=str(path)), frames_per_sentence=8)
        print(f"built and loaded {args.arch} in {time.perf_counter() - started:.1f} s on {base.device}")
    timer = DecodeTimer(base)
    run_ours(base, timer)  # warm-up: first-call allocations and kernel selection

    table: dict[str, dict[str, Any]] = {}
    print(f"{'len':>5} {'engine':>10} {'ttfa s':>8} {'wall s':>8} {'decode s':>9} {'rtf':>6} {'snr dB':>7}")
    for seconds in lengths:
        frames = round(seconds * base.frame_rate)
        engine = TTSEngine(base.config, base.model, base.tokenizer, frames_per_sentence=frames)
        runs = {"ours": run_ours(engine, timer)}
        for chunk_s in REFERENCE_CHUNKS_S:
            runs[f"ref {chunk_s:g}s"] = run_reference(engine, timer, chunk_s)
        duration = frames / base.frame_rate
        for name, run in runs.items():
            print(
                f"{seconds:>5g} {name:>10} {run.ttfa_s:>8.2f} {run.wall_s:>8.2f} {run.decode_s:>9.2f} "
                f"{run.wall_s / duration:>6.2f} {snr_db(run.audio, runs['ours'].audio):>7.1f}"
            )
        table[f"{seconds:g}"] = runs

    ours = {length: runs["ours"] for length, runs in table.items()}
    result = {
        "arch": args.arch,
        "device": str(base.device),
        "torch_threads": torch.get_num_threads(),
        "ttfa_s": {length: round(run.ttfa_s, 3) for length, run in ours.items()},
        "ttfa_ratio": {
            f"{chunk_s:g}s": {
                length: round(runs[f"ref {chunk_s:g}s"].ttfa_s / ours[length].ttfa_s, 2)
                for length, runs in table.items()
            }
            for chunk_s in REFERENCE_CHUNKS_S
        },
        "decode_ratio": {
            f"{chunk_s:g}s": {
                length: round(runs[f"ref {chunk_s:g}s"].decode_s / ours[length].decode_s, 2)
                for length, runs in table.items()
            }
            for chunk_s in REFERENCE_CHUNKS_S
        },
        "rtf": {length: round(run.wall_s / float(length), 2) for length, run in ours.items()},
        "snr_vs_reference_db": {
            length: round(snr_db(runs["ref 0.5s"].audio, runs["ours"].audio), 1) for length, runs in table.items()
        },
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
