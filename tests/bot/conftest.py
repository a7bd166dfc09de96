"""The bot against the Discord emulator: a guild with a text and a voice channel, members, and a runner."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest

from audio.asr import Transcriber
from audio.oracle import Oracle, OracleConfig
from audio.speech import SpeechEngine
from bot.client import MagicBot, build_bot
from bot.settings import Settings
from tests.emulator import DiscordEmulator, GuildState
from tests.emulator.fixtures import emulator  # noqa: F401  (the fixture)
from tests.emulator.records import InteractionRecord, MessageRecord
from tests.emulator.world import ChannelState, MemberState


@dataclass
class Scene:
    """One guild: #general, the Lounge voice channel, alice (a member) and mod (Manage Server)."""

    emu: DiscordEmulator
    guild: GuildState
    text: ChannelState
    lounge: ChannelState
    alice: MemberState
    mod: MemberState

    async def ask(self, question: str, user: MemberState | None = None) -> InteractionRecord:
        return await self.emu.slash_command(
            self.guild.id, self.text.id, (user or self.alice).id, "ask", {"question": question}
        )

    async def command(self, name: str, options: dict[str, Any] | None = None, user: MemberState | None = None):
        return await self.emu.slash_command(self.guild.id, self.text.id, (user or self.alice).id, name, options)

    async def post_voice_message(self, recording: bytes, channel: ChannelState | None = None) -> MessageRecord:
        """alice posts `recording` (OGG/Opus) as a native voice message in #general, or in `channel`."""
        return await self.emu.post_message(
            (channel or self.text).id,
            self.alice.id,
            attachments=[("voice-message.ogg", recording, "audio/ogg")],
            voice=True,
            duration_secs=1.5,
        )

    def bot_messages(self) -> list[MessageRecord]:
        """Messages the bot posted in #general (not interaction responses)."""
        return [m for m in self.emu.channel_messages(self.text.id) if m.author == self.emu.bot and m.webhook_id is None]


@pytest.fixture
def scene(emulator: DiscordEmulator) -> Scene:  # noqa: F811
    guild = emulator.add_guild("Oracle Guild")
    text = guild.add_text_channel("general")
    lounge = guild.add_voice_channel("Lounge")
    alice = guild.add_member("alice")
    mod = guild.add_member("mod", roles=[guild.add_role("Mods", discord.Permissions(manage_guild=True))])
    return Scene(emulator, guild, text, lounge, alice, mod)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test bot: its own database file, no cooldown, no real TTS model."""
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "cooldown_seconds": 0,
        "tts_enabled": False,
        "message_content_intent": True,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_bot(
    emu: DiscordEmulator,
    settings: Settings,
    *,
    tts: SpeechEngine | None = None,
    oracle: Oracle | None = None,
    transcriber: Transcriber | None = None,
) -> AsyncIterator[MagicBot]:
    """Start the real bot against the emulator (offline oracle with a fixed seed by default)."""
    bot = build_bot(
        settings,
        connector=emu.connector(),
        oracle=oracle or Oracle(OracleConfig(), rng=random.Random(8)),
        transcriber=transcriber,
        tts=tts,
    )
    bot._connection.guild_ready_timeout = 0.05  # the emulator announces every guild at once
    async with emu.run_client(bot, timeout=30):
        yield bot
