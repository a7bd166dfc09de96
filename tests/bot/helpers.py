"""Shared helpers for the bot's tests: the emulated guild, test settings, a running bot, reading answers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audio.asr import Transcriber
from audio.oracle import CLASSIC_ANSWERS, Oracle, OracleConfig
from audio.speech import SpeechEngine
from bot.client import MagicBot, build_bot
from bot.settings import Settings
from tests.emulator import DiscordEmulator, GuildState
from tests.emulator.records import EPHEMERAL, InteractionRecord, MessageRecord
from tests.emulator.world import ChannelState, MemberState
from tests.fakes.audio_files import encode, speechlike

ROOT = Path(__file__).resolve().parents[2]
SECRET = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.not-a-real-token-but-shaped-like-one"


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bot ...` in a subprocess, with no setting or token inherited from this environment."""
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields and not k.endswith("_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


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

    async def ask_recording(self, recording: bytes) -> InteractionRecord:
        """alice asks `/ask audio:` with `recording` (OGG) attached."""
        return await self.command("ask", {"audio": ("q.ogg", recording, "audio/ogg")})

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


def final_embed(record: InteractionRecord) -> dict:
    """The embed of the last edit of the original response."""
    embeds = [e.body["embeds"] for e in record.edits if e.body.get("embeds")]
    assert embeds, f"no answer embed in {record!r}"
    return embeds[-1][0]


def fields(embed: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed["fields"]}


def assert_answered_in_text_only(scene: Scene, record: InteractionRecord) -> None:
    """The answer came (one of the classic answers, with the oracle offline) with the voice's failure note, and
    no voice message was posted instead."""
    embed = final_embed(record)
    assert embed["footer"]["text"] == "🔇 The voice faltered, so this answer is text only."
    assert fields(embed)["🎱 The ball says"] in CLASSIC_ANSWERS
    assert not scene.bot_messages()


async def ephemeral_reply(record: InteractionRecord) -> str:
    """The ephemeral sentence the asker got (a type-4 callback, or a follow-up after a public defer)."""
    await record.wait_for(
        lambda r: (r.callback and r.callback.type == 4) or any(f.flags & EPHEMERAL for f in r.followups), 30
    )
    if record.callback is not None and record.callback.type == 4:
        assert record.ephemeral
        return record.callback.data["content"]
    (followup,) = [f for f in record.followups if f.flags & EPHEMERAL]
    assert any(e.kind == "delete_original" and e.ok for e in record.events), "the public placeholder stays"
    return followup.body["content"]


def spoken_question(ffmpeg: str, seconds: float = 1.5) -> bytes:
    return encode(speechlike(seconds), "ogg", ffmpeg)


def answered(record: InteractionRecord) -> bool:
    """Whether the interaction's response shows the answer embed."""
    return any(e.body.get("embeds") for e in record.edits)


async def join(scene: Scene, member_id: int | None = None, connections: int = 1) -> None:
    """A member (alice by default) sits in the Lounge and asks the bot to join it."""
    user = member_id or scene.alice.id
    await scene.emu.set_voice_state(scene.guild.id, user, scene.lounge.id)
    record = await scene.emu.slash_command(scene.guild.id, scene.text.id, user, "join")
    await record.wait_for(lambda r: r.edits, 30)
    assert record.edits[-1].body["content"].startswith("🔊 Joined")
    await scene.emu.voice(scene.guild.id).wait_connected(connections, 30)
