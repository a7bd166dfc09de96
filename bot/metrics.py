"""Prometheus metrics of the bot process (prometheus-client). Names and labels live here, in one place.

Metrics are process-wide module objects, so any part of the bot records into them without plumbing; the
metrics server (`METRICS_PORT`) exposes the default registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

Source = Literal["slash", "menu", "voice_message", "voice_channel"]
Outcome = Literal["spoken", "voice_message", "text_only", "refused", "failed"]
Stage = Literal["download", "transcription", "oracle", "tts_first_audio", "first_voice_packet", "answer"]

# Seconds: from tens of milliseconds (a first voice packet on a GPU) to a minute (a long answer on a CPU).
_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)

QUESTIONS = Counter(
    "magic8ball_questions", "Questions by where they came from and how they ended.", ["source", "outcome"]
)
STAGE_SECONDS = Histogram(
    "magic8ball_stage_seconds", "Latency of each stage of answering a question.", ["stage"], buckets=_BUCKETS
)
INFERENCE_ERRORS = Counter("magic8ball_inference_errors", "Inference API failures by kind.", ["service", "kind"])
UNDERRUNS = Counter("magic8ball_voice_underruns", "20 ms voice frames sent as silence because speech was late.")
PLAYER_QUEUE = Gauge("magic8ball_player_queue", "Answers waiting or playing in the per-guild players, in total.")
SPEECH_QUEUE = Gauge("magic8ball_speech_queue", "Answers waiting for a speech slot.")
SPEECH_SLOTS = Gauge("magic8ball_speech_slots_in_use", "Speech slots generating audio now.")
VOICE_CONNECTIONS = Gauge("magic8ball_voice_connections", "Connected voice channels.")
GATEWAY_LATENCY = Gauge("magic8ball_gateway_latency_seconds", "Heartbeat latency of each shard.", ["shard"])
SHARDS_CONNECTED = Gauge("magic8ball_shards_connected", "Shards of this process connected to the gateway.")


def record_question(source: Source, outcome: Outcome) -> None:
    """Count one finished question."""
    QUESTIONS.labels(source=source, outcome=outcome).inc()


def observe(stage: Stage, seconds: float) -> None:
    """Record one stage's latency."""
    STAGE_SECONDS.labels(stage=stage).observe(seconds)


@contextmanager
def timed(stage: Stage) -> Iterator[None]:
    """Time a block as `stage` (recorded whether it succeeds or raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe(stage, time.perf_counter() - start)
