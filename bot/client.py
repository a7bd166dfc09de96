"""The bot: a `commands.Bot` that loads the cogs, opens the store, warms up the voice and syncs commands."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import signal
import threading
import time
from typing import TYPE_CHECKING, cast

import aiohttp
import discord
import numpy as np
from discord import app_commands
from discord.ext import commands

from audio.asr import Transcriber
from audio.ffmpeg import ffmpeg_exe
from audio.oracle import Oracle
from audio.source import StreamingSource
from audio.speech import SpeechEngine, SpeechScheduler, Voice
from audio.voice_message import VoiceMessage, encode_voice_message
from bot.discord_io import NO_PINGS, tell
from bot.presets import PRESETS
from bot.services import build_oracle, build_speech_engine, build_transcriber
from bot.settings import Settings
from bot.store import GuildStore

if TYPE_CHECKING:
    from bot.cogs.voice import VoiceCog

log = logging.getLogger(__name__)

COGS = ("ask", "voice", "voice_messages", "settings")
CHARS_PER_SECOND = 14.0  # rough speaking rate, to estimate an answer's length before it is synthesised
_PERMISSION_NAMES = {"manage_guild": "Manage Server"}


class VoiceStatus(enum.Enum):
    """Whether answers can be spoken yet."""

    DISABLED = "Speech is turned off on this bot, so answers are text only."
    LOADING = "The voice is still warming up, so answers are text only for now."
    FAILED = "The voice could not be loaded, so answers are text only."
    READY = ""


def bot_intents(settings: Settings) -> discord.Intents:
    """Only what the bot uses: guilds and voice states; messages only for passive voice-message listening."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    if settings.message_content_intent:
        intents.guild_messages = True
        intents.message_content = True
    return intents


def estimate_seconds(text: str) -> float:
    """How long `text` takes to say, roughly (lets the streaming source size its pre-roll)."""
    return len(text) / CHARS_PER_SECOND + 0.5


class Admission:
    """Per-member cooldowns and a per-guild bound on questions in flight."""

    def __init__(self, cooldown_seconds: float, per_guild: int) -> None:
        self.cooldown_seconds = cooldown_seconds
        self.per_guild = per_guild
        self._last_ask: dict[tuple[int, int], float] = {}
        self._in_flight: dict[int, int] = {}

    def admit(self, guild_id: int, member_id: int) -> str | None:
        """Let a question in (the caller must `release` the guild later), or return why not."""
        busy = self._in_flight.get(guild_id, 0)
        if busy >= self.per_guild:
            what = "a question" if busy == 1 else f"{busy} questions"
            return f"The ball is already pondering {what} in this server; ask again once it has answered."
        now = time.monotonic()
        last = self._last_ask.get((guild_id, member_id))
        if last is not None and now - last < self.cooldown_seconds:
            wait = math.ceil(self.cooldown_seconds - (now - last))
            return f"Slow down: you can ask again in {wait} second{'s' if wait != 1 else ''}."
        self._last_ask[(guild_id, member_id)] = now
        self._in_flight[guild_id] = busy + 1
        return None

    def release(self, guild_id: int) -> None:
        """A question of this guild was answered (or failed)."""
        self._in_flight[guild_id] -= 1
        if not self._in_flight[guild_id]:
            del self._in_flight[guild_id]


class MagicTree(app_commands.CommandTree):
    """Answers every command error with one ephemeral sentence."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.MissingPermissions):
            names = ", ".join(_PERMISSION_NAMES.get(p, p.replace("_", " ").title()) for p in error.missing_permissions)
            sentence = f"You need the {names} permission to do that."
        elif isinstance(error, app_commands.NoPrivateMessage):
            sentence = "This only works in a server."
        elif isinstance(error, app_commands.CheckFailure):
            sentence = "You can't use that command here."
        else:
            log.error("Command %s failed", interaction.command and interaction.command.qualified_name, exc_info=error)
            sentence = "Something went wrong on my side; please try again."
        await tell(interaction, sentence)


class MagicBot(commands.Bot):
    """The Magic 8 Ball bot."""

    def __init__(
        self,
        settings: Settings,
        *,
        oracle: Oracle,
        transcriber: Transcriber,
        tts: SpeechEngine | None = None,
        connector: aiohttp.BaseConnector | None = None,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=MagicTree,
            intents=bot_intents(settings),
            allowed_mentions=NO_PINGS,
            connector=connector,
        )
        self.settings = settings
        self.oracle = oracle
        self.transcriber = transcriber
        self.store = GuildStore(settings.database_url)
        self.admission = Admission(settings.cooldown_seconds, settings.guild_concurrency)
        self.speech: SpeechScheduler | None = None
        self.sample_rate = 0
        self.voice_status = VoiceStatus.DISABLED
        self.ffmpeg = ""
        self._engine = tts
        self._tts_loader: asyncio.Task[None] | None = None

    @property
    def voice(self) -> VoiceCog:
        """The voice cog: per-guild players and connections."""
        return cast("VoiceCog", self.get_cog("Voice"))

    async def setup_hook(self) -> None:
        self.ffmpeg = await asyncio.to_thread(ffmpeg_exe, self.settings.ffmpeg_path)
        await self.store.open()
        for name in COGS:
            await self.load_extension(f"bot.cogs.{name}")
        if self._engine is not None:
            self._use_engine(self._engine)
        elif self.settings.tts_enabled:
            self.voice_status = VoiceStatus.LOADING
            self._tts_loader = asyncio.create_task(self._load_tts(), name="tts-load")
        await self._sync_commands()

    async def _load_tts(self) -> None:
        try:
            engine = await asyncio.to_thread(build_speech_engine, self.settings)
        except Exception:
            log.exception("Loading the speech engine failed; answers stay text only")
            self.voice_status = VoiceStatus.FAILED
        else:
            self._use_engine(engine)

    def _use_engine(self, engine: SpeechEngine) -> None:
        self._engine = engine
        self.speech = SpeechScheduler(
            engine,
            queue_size=self.settings.tts_queue_size,
            queue_per_key=self.settings.tts_queue_per_guild,
            slots_per_key=self.settings.tts_slots_per_guild,
        )
        self.sample_rate = engine.sample_rate
        self.voice_status = VoiceStatus.READY
        log.info("The voice is ready (%s Hz)", engine.sample_rate)

    async def _sync_commands(self) -> None:
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        try:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException:
            log.exception("Syncing application commands failed; Discord keeps the previous ones")
        else:
            log.info("Synced %d commands %s", len(synced), f"to guild {guild.id}" if guild else "globally")

    async def on_ready(self) -> None:
        log.info("Logged in as %s in %d guilds", self.user, len(self.guilds))

    async def close(self) -> None:
        if self._tts_loader is not None:
            self._tts_loader.cancel()
        await super().close()  # unloads the cogs, which stop their players
        if self.speech is not None:
            await self.speech.close()
        if (close_engine := getattr(self._engine, "close", None)) is not None:  # a remote engine's HTTP session
            await asyncio.to_thread(close_engine)
        await self.store.close()

    async def guild_voice(self, guild_id: int) -> Voice:
        """The voice this guild chose with /voice set, or the configured default."""
        preset = PRESETS.get(await self.store.voice_preset(guild_id) or "")
        if preset is None:
            return Voice(self.settings.tts_voice_description, self.settings.tts_seed)
        return Voice(preset.description, preset.seed)

    def new_source(self, text: str) -> StreamingSource:
        """A live audio source for speaking `text` in voice."""
        return StreamingSource(self.sample_rate, ffmpeg=self.ffmpeg, expected_seconds=estimate_seconds(text))

    async def record(self, guild_id: int, text: str, voice: Voice) -> VoiceMessage:
        """Synthesise `text` completely and encode it as a voice message (raises if TTS is not ready)."""
        if self.speech is None:
            raise RuntimeError("the voice is not ready")
        chunks = [chunk async for chunk in self.speech.stream(guild_id, text, voice)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return await asyncio.to_thread(encode_voice_message, samples, self.sample_rate, ffmpeg=self.ffmpeg)


def build_bot(
    settings: Settings,
    *,
    connector: aiohttp.BaseConnector | None = None,
    oracle: Oracle | None = None,
    transcriber: Transcriber | None = None,
    tts: SpeechEngine | None = None,
) -> MagicBot:
    """The bot with its services; tests inject fakes (a TTS engine given here skips the background load)."""
    return MagicBot(
        settings,
        oracle=oracle or build_oracle(settings),
        transcriber=transcriber or build_transcriber(settings),
        tts=tts,
        connector=connector,
    )


def run(settings: Settings) -> None:
    """Run the bot until it is stopped (Ctrl+C or SIGTERM)."""
    discord.utils.setup_logging(level=logging.getLevelName(settings.log_level.upper()))
    assert settings.discord_token is not None

    async def main() -> None:
        async with build_bot(settings) as bot:
            if threading.current_thread() is threading.main_thread():  # signal handlers need the main thread
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
            await bot.start(settings.discord_token.get_secret_value().strip())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        log.info("Stopped")
