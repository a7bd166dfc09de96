"""Speech: answer text → float32 mono chunks, streamed.

This package's top level never imports torch: the bot uses `Voice`, `TTSConfig`, the errors, the `SpeechEngine`
protocol and the fair `SpeechScheduler` from here, and torch loads only when `load_engine` builds an engine.
The modules read as the data flow: `voice` (what the bot knows), `scheduler` (who speaks next), `parler` (the
model), `codec` (frames → audio), `reference` (the one-at-a-time `generate()` engine kept as the baseline).
"""

from __future__ import annotations

from audio.speech.scheduler import SpeechScheduler, SpeechStream
from audio.speech.voice import (
    DEFAULT_SEED,
    DEFAULT_VOICE,
    JENNY_DESCRIPTION,
    SpeechEngine,
    TTSConfig,
    TTSError,
    TTSQueueFull,
    Voice,
    split_sentences,
    synthesize,
)

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_VOICE",
    "JENNY_DESCRIPTION",
    "SpeechEngine",
    "SpeechScheduler",
    "SpeechStream",
    "TTSConfig",
    "TTSError",
    "TTSQueueFull",
    "Voice",
    "load_engine",
    "split_sentences",
    "synthesize",
]


def load_engine(config: TTSConfig) -> SpeechEngine:
    """The serving engine for `config` (loads torch and the model; blocking)."""
    from audio.speech.reference import TTSEngine

    return TTSEngine.load(config)
