"""Speech: answer text → float32 mono chunks, streamed.

This package's top level never imports torch: the bot uses `Voice`, `TTSConfig`, the errors, the `SpeechEngine`
protocol and the fair `SpeechScheduler` from here, and torch loads only when `load_engine` builds an engine.
The modules read as the data flow: `voice` (what the bot knows), `scheduler` (who speaks next), `server` (the
serving engine), `loop` (continuous batching over the rows of `slots`' static cache, with `rules` for Parler's
generation semantics, `decoder` for the step and `graphs` for its CUDA graphs), `codec` (frames → audio on a
worker thread), `cpu_path` (the CPU decoder's kernels, measured at load), `parler` (loading, int8, codec
plumbing), `reference` (the one-at-a-time `generate()` engine kept as the baseline for tests and benchmarks).
"""

from __future__ import annotations

from audio.speech.scheduler import SpeechScheduler, SpeechStream
from audio.speech.stack import SpeechStackError, check_speech_stack, speech_stack_problem
from audio.speech.voice import (
    DEFAULT_SEED,
    DEFAULT_VOICE,
    HEALTHY,
    JENNY_DESCRIPTION,
    EngineHealth,
    SpeechEngine,
    TTSConfig,
    TTSError,
    TTSQueueFull,
    Voice,
    close_engine,
    engine_health,
    split_sentences,
    synthesize,
)

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_VOICE",
    "HEALTHY",
    "JENNY_DESCRIPTION",
    "EngineHealth",
    "SpeechEngine",
    "SpeechScheduler",
    "SpeechStackError",
    "SpeechStream",
    "TTSConfig",
    "TTSError",
    "TTSQueueFull",
    "Voice",
    "check_speech_stack",
    "close_engine",
    "engine_health",
    "load_engine",
    "speech_stack_problem",
    "split_sentences",
    "synthesize",
]


def load_engine(config: TTSConfig) -> SpeechEngine:
    """The serving engine for `config` (loads torch and the model, warms it up; blocking). Raises
    `SpeechStackError` with one sentence when a package of the speech stack does not import."""
    check_speech_stack()
    from audio.speech.server import SpeechServer

    return SpeechServer.load(config)
