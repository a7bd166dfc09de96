"""What the bot needs to know about speech, without torch: voices, configuration, errors, the engine protocol."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from audio.errors import UserFacingError

JENNY_DESCRIPTION = (
    "Jenny speaks at an average pace with a calm delivery in a very confined sounding environment "
    "with clear audio quality."
)
DEFAULT_SEED = 42
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class Voice:
    """A speaker: Parler's natural-language description plus the sampling seed that fixes the timbre."""

    description: str
    seed: int = DEFAULT_SEED


DEFAULT_VOICE = Voice(JENNY_DESCRIPTION)


@dataclass(frozen=True)
class TTSConfig:
    """Model and streaming settings.

    `device`/`dtype` "auto": cuda, mps or cpu; bf16/fp16 on GPUs, fp32 on CPU. The first chunk of an answer lasts
    `first_chunk_s`, the next ones double up to `chunk_s`; each is decoded with `context_frames` codec frames of
    context on both sides (8 frames ≈ 93 ms of extra latency, about 70 dB match with a full decode). `quantize="int8"`
    lets the CPU use int8 decoder weights; `cpu_path` forces the CPU decoding path (`audio.speech.cpu_path`).
    """

    model: str = "parler-tts/parler-mini-v1-jenny"
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    first_chunk_s: float = 0.25
    chunk_s: float = 1.0
    context_frames: int = 8
    max_batch: int | None = None
    max_frames: int | None = None
    quantize: Literal["none", "int8"] = "none"
    cpu_path: Literal["auto", "fp32", "packed", "int8", "bf16"] = "auto"


class TTSError(Exception):
    """Speech generation failed (the answer falls back to text)."""


class TTSQueueFull(UserFacingError):
    """Too many answers are waiting to be spoken; `retry_after` estimates when there will be room."""

    @classmethod
    def after(cls, seconds: float) -> TTSQueueFull:
        """The refusal with its sentence, for room in about `seconds`."""
        sentence = f"The voice is busy with other answers; please try again in about {math.ceil(seconds)} seconds."
        return cls(sentence, retry_after=seconds)


class SpeechEngine(Protocol):
    """A speech engine: float32 mono chunks at `sample_rate`, for up to `max_streams` answers at once.

    An engine may also have `health() -> EngineHealth` (read through `engine_health`) and `close()`.
    """

    sample_rate: int
    max_streams: int

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Yield chunks as they are generated; setting `cancel` stops within one step; failures raise `TTSError`."""
        ...


@dataclass(frozen=True)
class EngineHealth:
    """An engine's state now: `problem` is one sentence saying why it cannot serve, empty when it can."""

    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


HEALTHY = EngineHealth()


def engine_health(engine: object) -> EngineHealth:
    """What `engine.health()` reports; an engine without that method is healthy while it exists.

    The one place the bot's `/healthz` and the speech app's replica check read an engine's state.
    """
    health = getattr(engine, "health", None)
    return health() if callable(health) else HEALTHY


def close_engine(engine: object) -> None:
    """Close `engine` if it has anything to close (threads, HTTP sessions). Blocking."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


def synthesize(engine: SpeechEngine, text: str, voice: Voice) -> np.ndarray:
    """The whole answer as one array (voice messages, CLI). Blocking."""
    return np.concatenate([np.zeros(0, np.float32), *engine.stream(text, voice)])


def split_sentences(text: str) -> list[str]:
    """Split an answer at sentence ends so the first sentence can be spoken while the rest is generated."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]
