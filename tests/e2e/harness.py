"""End-to-end harness shared by the scenarios and `bench.e2e`: an audible tiny TTS model, a spy on the bot's
voice sources, the RTP packets of one answer and how closely they match what the model said.

The tiny random-weight Parler-TTS checkpoint (`tests.fakes.tiny_parler`) keeps the real DAC codec, but with
random weights its output is a DC offset plus a tone at the Nyquist frequency, almost independent of the codes:
nothing that survives Opus or tells one answer from another. `tests.fakes.tiny_parler.build_voiced_parler` saves
an audible copy (about 0.96 correlation through the bot's 64 kbit/s Opus; 0.35 between answers).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import numpy as np

from audio.source import FRAME_SECONDS, StreamingSource
from audio.speech import TTSConfig
from audio.speech.server import SpeechServer
from bot.client import MagicBot
from bot.services import build_oracle
from bot.settings import Settings
from tests.audio.helpers import aligned_correlation, decode
from tests.bot.doubles import until
from tests.bot.helpers import Scene, make_settings, running_bot
from tests.emulator import DiscordEmulator, RtpPacket
from tests.emulator.dave import E2E, PLAIN
from tests.emulator.opus import decode_opus
from tests.emulator.voice import SAMPLES_PER_FRAME, TRAILING_SILENCE_FRAMES
from tests.fakes.inference import FakeInference
from tests.fakes.tiny_parler import build_voiced_parler

FRAMES_PER_SENTENCE = 40  # 0.46 s of audio per sentence
MIN_CORRELATION = 0.9
MIN_END_TO_END = 0.99  # share of the audio frames after the first transition decrypted with the group's key


def load_voiced_engine(path: Path) -> SpeechServer:
    """The voiced checkpoint through the bot's loading code: 40 frames per sentence, chunks of 9 then 22.

    The decoder stays on plain fp32 (`TTS_CPU_PATH=fp32`, as `local_speech_app`'s replica) so the audio of two engines
    on this checkpoint can be compared: measured at each load, the fastest path can differ from process to process,
    and sampling from random weights turns the smallest numeric difference into another sound."""
    config = TTSConfig(
        model=str(build_voiced_parler(path)),
        device="cpu",
        first_chunk_s=0.1,
        chunk_s=0.25,
        context_frames=8,
        cpu_path="fp32",
    )
    return SpeechServer.load(config, frames_per_sentence=FRAMES_PER_SENTENCE)


@dataclass(eq=False)
class Spoken:
    """One voice source the bot created, with the chunks it fed (at the engine's rate)."""

    text: str
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
            record = Spoken(text, create(text))
            feed = record.source.feed

            def recording_feed(chunk: np.ndarray) -> None:
                record.chunks.append(np.array(chunk, np.float32))
                feed(chunk)

            record.source.feed = recording_feed  # type: ignore[method-assign]
            self.spoken.append(record)
            return record.source

        bot.new_source = new_source  # type: ignore[method-assign]


def build_scene(emu: DiscordEmulator, name: str = "Oracle Guild", shard: tuple[int, int] | None = None) -> Scene:
    """A guild laid out like the `scene` fixture's: #general, the Lounge, a member and a moderator (`shard`:
    `(id, count)` the guild belongs to)."""
    guild = emu.add_guild(name, shard=shard)
    mods = guild.add_role("Mods", discord.Permissions(manage_guild=True))
    return Scene(
        emu,
        guild,
        guild.add_text_channel("general"),
        guild.add_voice_channel("Lounge"),
        guild.add_member("alice"),
        guild.add_member("mod", roles=[mods]),
    )


def e2e_settings(tmp_path: Path, fake: FakeInference, **overrides: Any) -> Settings:
    """Test settings with the oracle and speech recognition served by the fake Inference API."""
    urls = {"llm_base_url": f"{fake.url}/llm", "asr_base_url": f"{fake.url}/asr"}
    return make_settings(tmp_path, **{**urls, **overrides})


@asynccontextmanager
async def serving(
    scene: Scene, tmp_path: Path, fake: FakeInference, engine: SpeechServer, **overrides: Any
) -> AsyncIterator[tuple[MagicBot, SourceSpy]]:
    """The bot with the real TTS engine and the fake Inference API, and a spy on its voice sources."""
    settings = e2e_settings(tmp_path, fake, **overrides)
    async with running_bot(scene.emu, settings, tts=engine, oracle=build_oracle(settings)) as bot:
        yield bot, SourceSpy(bot)


async def settled(bot: MagicBot, timeout: float = 60) -> None:
    """Wait until the bot has finished every question (its outcome recorded, its reply final): the far end hearing
    the trailing silence comes a little before the player resolves the answer, and closing the bot in between
    would stop an answer that was in fact spoken."""
    await until(lambda: not len(bot.in_flight), timeout)


def answer_packets(packets: list[RtpPacket], start: int = 0) -> list[RtpPacket]:
    """One answer: from its first audio packet at or after index `start` of a guild's packets (skipping the end of
    an earlier answer's trailing silence) up to and including its own trailing silence."""
    span: list[RtpPacket] = []
    for packet in packets[start:]:
        if span or not packet.silence:
            span.append(packet)
        if len(span) >= TRAILING_SILENCE_FRAMES and all(p.silence for p in span[-TRAILING_SILENCE_FRAMES:]):
            break
    return span


async def heard(emu: DiscordEmulator, guild_id: int, start: int = 0, timeout: float = 60) -> list[RtpPacket]:
    """Wait until the answer starting at packet `start` of the guild's voice ended (trailing silence)."""
    voice = emu.voice(guild_id)

    def ended() -> list[RtpPacket] | None:
        span = answer_packets(voice.packets, start)
        done = len(span) > TRAILING_SILENCE_FRAMES and all(p.silence for p in span[-TRAILING_SILENCE_FRAMES:])
        return span if done else None

    return await emu.wait_for(ended, timeout, f"an answer from packet {start} in guild {guild_id}")


def assert_heard_end_to_end(packets: list[RtpPacket]) -> None:
    """The far end heard `packets` through DAVE: from the first audio frame sent after a transition to an encrypted
    group on, at least 99% of the audio frames decrypted with the group's key (a frame let through as plain or
    that could not be decrypted counts against it)."""
    audio = [p for p in packets if not p.silence and not p.ogg_header]
    first = next((index for index, packet in enumerate(audio) if packet.secured), None)
    assert first is not None, "no audio frame was sent after a transition to an encrypted group"
    after = audio[first:]
    outcomes = Counter(p.e2e for p in after)
    assert outcomes[E2E] >= MIN_END_TO_END * len(after), f"what the far end made of the frames: {outcomes}"


async def assert_played_whole(
    packets: list[RtpPacket], spoken: Spoken, sample_rate: int, ffmpeg: str, dave: bool = True
) -> None:
    """`packets` (one answer, see `answer_packets`) carried all of `spoken`'s audio: end-to-end encrypted (or, with
    `dave` false, transport encryption only), sequence numbers and timestamps continuous, a silence frame only
    where the source counted an underrun, and the sound itself as the far end decrypted it."""
    assert spoken.source.end_reason == "finished"
    if dave:
        assert_heard_end_to_end(packets)
    else:
        assert all(p.e2e == PLAIN for p in packets)
    steps = list(itertools.pairwise(packets))
    assert all((b.sequence - a.sequence) % 2**16 == 1 for a, b in steps)
    assert all((b.timestamp - a.timestamp) % 2**32 == SAMPLES_PER_FRAME for a, b in steps)
    assert not any(p.ogg_header for p in packets)
    body = packets[:-TRAILING_SILENCE_FRAMES]
    assert all(p.silence for p in packets[-TRAILING_SILENCE_FRAMES:])
    assert sum(p.silence for p in body) == spoken.source.underruns
    assert len(body) - spoken.source.underruns == spoken.source.frames_read
    assert abs(spoken.source.frames_read * FRAME_SECONDS - len(spoken.audio) / sample_rate) <= 2 * FRAME_SECONDS
    assert await correlation(packets, spoken.audio, sample_rate, ffmpeg) >= MIN_CORRELATION


def similarity(received: np.ndarray, reference: np.ndarray, sample_rate: int, ffmpeg: str) -> float:
    """Correlation of `received` (mono, 48 kHz) with `reference` (mono, at `sample_rate`) resampled to 48 kHz
    with ffmpeg's soxr like the bot does, at their best alignment."""
    raw = ("-f", "f32le", "-ar", str(sample_rate), "-ac", "1")
    value, _ = aligned_correlation(received, decode(reference.astype(np.float32).tobytes(), ffmpeg, *raw))
    return value


async def correlation(packets: list[RtpPacket], reference: np.ndarray, sample_rate: int, ffmpeg: str) -> float:
    """`similarity` of the Opus audio carried by `packets` with `reference`."""
    received = await decode_opus([p.payload for p in packets if not p.ogg_header])
    return similarity(received.mean(axis=1), reference, sample_rate, ffmpeg)
