"""End-to-end fixtures: the real bot, the Discord emulator, the fake Inference API and the tiny Parler-TTS model.

The guild (`scene`), the settings and the bot runner come from `tests/bot/conftest.py`, the tiny TTS engine from
`tests/audio/conftest.py`; this module adds what the end-to-end scenarios measure: the audio the bot fed to its
voice sources, the RTP packets of one answer, and how closely the two match.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audio.source import StreamingSource
from audio.tts import TTSEngine
from bot.client import MagicBot
from bot.playback import GuildPlayer
from bot.services import build_oracle
from tests.audio.conftest import tiny_parler_dir, tiny_tts_engine  # noqa: F401  (fixtures)
from tests.audio.test_source import aligned_correlation, decode
from tests.bot.conftest import Scene, make_settings, running_bot, scene  # noqa: F401  (scene: a fixture)
from tests.emulator.opus import decode_opus
from tests.emulator.voice import TRAILING_SILENCE_FRAMES, RtpPacket
from tests.fakes.inference import FakeInference

MIN_CORRELATION = 0.9


@dataclass(eq=False)
class Spoken:
    """One voice source the bot created: the chunks it fed (at the engine's rate) and the source itself."""

    source: StreamingSource
    chunks: list[np.ndarray] = field(default_factory=list)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.float32), *self.chunks])


class SourceSpy:
    """Wraps `bot.new_source` to keep every source and the chunks fed into it."""

    def __init__(self, bot: MagicBot) -> None:
        self.spoken: list[Spoken] = []
        create = bot.new_source

        def new_source(text: str) -> StreamingSource:
            record = Spoken(create(text))
            feed = record.source.feed

            def recording_feed(chunk: np.ndarray) -> None:
                record.chunks.append(chunk.copy())
                feed(chunk)

            record.source.feed = recording_feed  # type: ignore[method-assign]
            self.spoken.append(record)
            return record.source

        bot.new_source = new_source  # type: ignore[method-assign]


def e2e_settings(tmp_path: Path, fake: FakeInference, **overrides: Any) -> Any:
    """Test settings with the oracle and speech recognition served by the fake Inference API."""
    return make_settings(tmp_path, llm_base_url=f"{fake.url}/llm", asr_base_url=f"{fake.url}/asr", **overrides)


@asynccontextmanager
async def serving(
    scene: Scene, tmp_path: Path, fake: FakeInference, engine: TTSEngine, **overrides: Any
) -> AsyncIterator[tuple[MagicBot, SourceSpy]]:
    """The bot with the real TTS engine and the fake Inference API, and a spy on its voice sources."""
    settings = e2e_settings(tmp_path, fake, **overrides)
    async with running_bot(scene.emu, settings, tts=engine, oracle=build_oracle(settings)) as bot:
        yield bot, SourceSpy(bot)


async def join(scene: Scene, channel_id: int | None = None, connections: int = 1) -> None:
    """alice sits in a voice channel (the Lounge by default) and asks the bot to join it."""
    await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, channel_id or scene.lounge.id)
    record = await scene.command("join")
    await record.wait_for(lambda r: r.edits, 30)
    assert record.edits[-1].body["content"].startswith("🔊 Joined")
    await scene.emu.voice(scene.guild.id).wait_connected(connections, 30)


def answered(record: Any) -> bool:
    """Whether the interaction's response shows the answer embed."""
    return any(e.body.get("embeds") for e in record.edits)


def resampled(samples: np.ndarray, sample_rate: int, ffmpeg: str) -> np.ndarray:
    """Mono float32 `samples` resampled to Discord's 48 kHz the way the bot does it (ffmpeg, soxr)."""
    return decode(samples.astype(np.float32).tobytes(), ffmpeg, "-f", "f32le", "-ar", str(sample_rate), "-ac", "1")


async def correlation(packets: list[RtpPacket], reference: np.ndarray, sample_rate: int, ffmpeg: str) -> float:
    """Correlation of the Opus audio in `packets` with `reference` (at `sample_rate`), at the best alignment."""
    received = (await decode_opus([p.payload for p in packets if not p.ogg_header])).mean(axis=1)
    value, _ = aligned_correlation(received, resampled(reference, sample_rate, ffmpeg))
    return value


def answer_packets(packets: list[RtpPacket], start: int = 0) -> list[RtpPacket]:
    """The packets of the answer starting at index `start` of a guild's packets, up to its trailing silence."""
    span: list[RtpPacket] = []
    for packet in packets[start:]:
        span.append(packet)
        if len(span) >= TRAILING_SILENCE_FRAMES and all(p.silence for p in span[-TRAILING_SILENCE_FRAMES:]):
            break
    return span


class StopClock:
    """Records (monotonic) when a guild player's `stop()` ran: when the bot acted on /stop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[float] = []
        original = GuildPlayer.stop

        def stop(player: GuildPlayer) -> int:
            self.calls.append(time.monotonic())
            return original(player)

        monkeypatch.setattr(GuildPlayer, "stop", stop)

