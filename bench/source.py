"""Benchmark the streaming source: first-frame latency, CPU per second of audio, underruns in real time.

`python -m bench.source --json` compares Opus-by-ffmpeg with the PCM fallback in the same run and ends with
one JSON line holding `first_frame_ms` and `cpu_per_audio_s` (Opus mode). Targets: first frame under 60 ms
after the first chunk; under 2% of one core per second of audio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import threading
import time

import numpy as np

from audio.source import FRAME_SECONDS, StreamingSource

RATE = 44_100  # Parler-TTS's DAC rate
CHUNK_SECONDS = 0.5
FIRST_FRAME_TARGET_MS = 60.0
CPU_TARGET = 0.02


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, with a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * voice + noise).astype(np.float32)


def first_frame_ms(opus: bool, runs: int) -> list[float]:
    """Latency from writing the first chunk (ffmpeg already started, as during TTS start-up) to a frame."""
    chunk = speech(CHUNK_SECONDS)
    latencies = []
    for _ in range(runs):
        source = StreamingSource(RATE, opus=opus)
        try:
            time.sleep(0.3)  # the model's time to first audio: ffmpeg is up by then
            start = time.perf_counter()
            source.feed(chunk)
            while not source.buffered_frames:
                time.sleep(0.0002)
            latencies.append((time.perf_counter() - start) * 1000)
        finally:
            source.cleanup()
    return latencies


def cpu_per_audio_second(opus: bool, utterances: int, seconds: float) -> float:
    """CPU seconds (ffmpeg plus this process's threads) per second of audio, producer faster than real time."""
    audio = speech(seconds)
    size = int(CHUNK_SECONDS * RATE)
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    for _ in range(utterances):
        source = StreamingSource(RATE, opus=opus)
        for i in range(0, audio.size, size):
            source.feed(audio[i : i + size])
        source.finish()
        source.wait_ready()
        while source.end_reason is None:
            time.sleep(0.01)
        while source.read():
            pass
        source.cleanup()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    cpu += time.process_time() - own
    return cpu / (utterances * seconds)


def realtime_underruns(speed: float, seconds: float) -> tuple[int, float]:
    """Play in real time as discord.py does (a read every 20 ms once ready) while a producer delivers
    `speed` seconds of audio per second; returns underruns and the wait before playback started."""
    audio = speech(seconds, seed=1)
    size = int(CHUNK_SECONDS * RATE)
    source = StreamingSource(RATE, expected_seconds=seconds)

    def produce() -> None:
        for i in range(0, audio.size, size):
            time.sleep(CHUNK_SECONDS / speed)
            source.feed(audio[i : i + size])
        source.finish()

    begin = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        source.wait_ready()
        started = time.perf_counter()
        ticks = 0
        while source.read():
            ticks += 1
            time.sleep(max(0.0, started + ticks * FRAME_SECONDS - time.perf_counter()))
    finally:
        producer.join()
        source.cleanup()
    return source.underruns, started - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    for name, opus in (("opus", True), ("pcm", False)):
        latencies = first_frame_ms(opus, args.runs)
        cpu = cpu_per_audio_second(opus, utterances=5, seconds=5.0)
        results[name] = {
            "first_frame_ms": round(statistics.median(latencies), 2),
            "first_frame_ms_max": round(max(latencies), 2),
            "cpu_per_audio_s": round(cpu, 4),
        }
        print(
            f"{name:4}: first frame {results[name]['first_frame_ms']:.1f} ms median "
            f"(max {results[name]['first_frame_ms_max']:.1f}) after a {CHUNK_SECONDS} s chunk; "
            f"{cpu * 100:.2f}% of a core per second of audio"
        )
    underruns = {}
    for speed in (0.5, 1.0, 3.0):
        count, waited = realtime_underruns(speed, seconds=3.0)
        underruns[str(speed)] = count
        print(f"producer at {speed}x real time: {count} underruns, playback started after {waited:.2f} s")

    opus = results["opus"]
    summary = {
        "first_frame_ms": opus["first_frame_ms"],
        "cpu_per_audio_s": opus["cpu_per_audio_s"],
        "pcm_reference": results["pcm"],
        "underruns_by_speed": underruns,
        "targets_met": opus["first_frame_ms"] < FIRST_FRAME_TARGET_MS and opus["cpu_per_audio_s"] < CPU_TARGET,
    }
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
