"""The bot: a `commands.Bot` that loads the cogs, opens the store, warms up the voice and syncs commands."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import aiohttp
import discord
import numpy as np
from discord import app_commands
from discord.ext import commands
from sqlalchemy.exc import SQLAlchemyError

from audio.asr import Transcriber
from audio.ffmpeg import ffmpeg_exe, run_ffmpeg_work
from audio.oracle import Oracle
from audio.source import StreamingSource
from audio.speech import (
    SpeechEngine,
    SpeechScheduler,
    SpeechStackError,
    TTSError,
    Voice,
    close_engine,
    engine_health,
)
from audio.voice_message import VoiceMessage, encode_voice_message
from bot.admission import Admission
from bot.discord_io import NO_PINGS, tell
from bot.logs import guild_context, setup_logging
from bot.metrics import observe
from bot.monitoring import MonitoringServer
from bot.playback import Players, estimate_seconds
from bot.presets import PRESETS
from bot.services import build_oracle, build_speech_engine, build_transcriber, question_rules
from bot.settings import Settings
from bot.shutdown import InFlight
from bot.store import GuildStore

if TYPE_CHECKING:
    from bot.cogs.listening import ListeningCog

log = logging.getLogger(__name__)

COGS = ("ask", "voice", "voice_messages", "admin", "listening")
_PERMISSION_NAMES = {"manage_guild": "Manage Server"}
LOAD_RETRY_S = (2.0, 120.0)
"""The pause before loading the voice again after a failure: the first one, doubling up to the second."""
EXIT_GRACE_S = 5.0
"""How long past SHUTDOWN_SECONDS a stopping process may take to exit before it is ended regardless."""


class SpeechStatus(enum.Enum):
    """Whether answers can be spoken yet; each value is the note shown with text-only answers."""

    DISABLED = "Speech is turned off on this bot, so answers are text only."
    LOADING = "The voice is still warming up, so answers are text only for now."
    FAILED = "The voice could not be loaded, so answers are text only."
    READY = ""

    @property
    def is_ready(self) -> bool:
        return self is SpeechStatus.READY

    @property
    def note(self) -> str:
        """Why answers are text only (empty when ready)."""
        return self.value


def bot_intents(settings: Settings) -> discord.Intents:
    """Only what the bot uses: guilds and voice states; messages only for passive voice-message listening."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    if settings.message_content_intent:
        intents.guild_messages = True
        intents.message_content = True
    return intents


class MagicTree(app_commands.CommandTree):
    """Answers every command error with one ephemeral sentence; tags the command's log lines with its guild."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        guild_context.set(interaction.guild_id)  # for the rest of this interaction's task and the tasks it starts
        return True

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
        await tell(interaction, sentence, replace=True)  # the sentence replaces a public "thinking…" response


class MagicBot(commands.AutoShardedBot):
    """The Magic 8 Ball bot: the shards SHARD_COUNT and SHARD_IDS name (all of Discord's recommendation by default)."""

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
            shard_count=settings.shard_count,
            shard_ids=list(settings.shard_ids) if settings.shard_ids is not None else None,
        )
        self.settings = settings
        self.oracle = oracle
        self.transcriber = transcriber
        self.store = GuildStore(
            settings.database_url.get_secret_value(), connect_seconds=settings.database_connect_seconds
        )
        self.admission = Admission(settings.cooldown_seconds, settings.guild_concurrency)
        self.questions = question_rules(settings)
        self.transcriptions = asyncio.Semaphore(settings.max_concurrent_transcriptions)
        self.speech: SpeechScheduler | None = None
        self.sample_rate = 0
        self.speech_status = SpeechStatus.DISABLED
        self.ffmpeg = ""
        self._given_engine = tts  # belongs to the caller; an engine the bot builds is closed with it
        self._built_engine: SpeechEngine | None = None
        self.engine: SpeechEngine | None = None  # the engine in use, once ready
        self._tts_loader: asyncio.Task[None] | None = None
        self.monitoring = MonitoringServer(self)
        # Graceful shutdown (bot.shutdown): no new questions once closing; those in flight are tracked.
        self.closing = False
        self.in_flight = InFlight()

    @property
    def voice(self) -> Players:
        """The voice cog: per-guild players and connections."""
        return cast(Players, self.get_cog("Voice"))

    @property
    def listening(self) -> ListeningCog:
        """The listening cog: questions asked aloud in the voice channel."""
        return cast("ListeningCog", self.get_cog("Listening"))

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: posted messages only reach the cogs' listeners (mentions are not commands)."""

    async def setup_hook(self) -> None:
        if self.settings.metrics_port is not None:
            await self.monitoring.start(self.settings.metrics_host, self.settings.metrics_port)
        self.ffmpeg = await asyncio.to_thread(ffmpeg_exe, self.settings.ffmpeg_path)
        await self.store.open()
        for name in COGS:
            await self.load_extension(f"bot.cogs.{name}")
        if self._given_engine is not None:
            self._use_engine(self._given_engine)
        elif self.settings.tts_enabled and not (self.closing or self.is_closed()):  # a SIGTERM during start-up
            self.speech_status = SpeechStatus.LOADING
            self._tts_loader = asyncio.create_task(self._load_tts(), name="tts-load")
        await self._sync_commands()

    async def _load_tts(self) -> None:
        """Load the engine; after a failure (e.g. the speech server is down) try again, with backoff, until it
        loads or the bot closes. Answers are text only meanwhile."""
        pause = LOAD_RETRY_S[0]
        while True:
            try:
                engine = await _load_engine_in_background(self.settings)
            except SpeechStackError as error:  # an install problem: loading again would fail the same way
                log.error("%s Answers stay text only.", error)
                self.speech_status = SpeechStatus.FAILED
                return
            except Exception as exc:
                if self.speech_status is SpeechStatus.LOADING:
                    log.exception("Loading the speech engine failed; answers are text only until it loads")
                else:
                    log.warning("Loading the speech engine failed again: %s", exc)
                log.info("Loading the speech engine again in %g seconds", pause)
                self.speech_status = SpeechStatus.FAILED
                await asyncio.sleep(pause)
                pause = min(LOAD_RETRY_S[1], pause * 2)
            else:
                self._built_engine = engine
                self._use_engine(engine)
                return

    def speech_problem(self) -> str:
        """Why speech does not work now, as a sentence for `/healthz`; empty when it works or is turned off."""
        if self.speech_status in (SpeechStatus.LOADING, SpeechStatus.FAILED):
            return self.speech_status.note
        if self.engine is not None and not (health := engine_health(self.engine)).ok:
            return f"The voice is not working: {health.problem}."
        return ""

    def _use_engine(self, engine: SpeechEngine) -> None:
        self.speech = SpeechScheduler(
            engine,
            queue_size=self.settings.tts_queue_size,
            queue_per_key=self.settings.tts_queue_per_guild,
            slots_per_key=self.settings.tts_slots_per_guild,
        )
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.speech_status = SpeechStatus.READY
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
        if self._built_engine is not None:  # threads, HTTP sessions
            await asyncio.to_thread(close_engine, self._built_engine)
        await self.store.close()
        await self.monitoring.stop()

    async def shutdown(self) -> None:
        """Stop gracefully: refuse new questions, give those in flight two thirds of SHUTDOWN_SECONDS, end the
        rest with one sentence, then close (voice, speech, store)."""
        self.closing = True
        seconds = self.settings.shutdown_seconds
        log.info("Shutting down: %d questions in flight, %g seconds at most", len(self.in_flight), seconds)
        cut = await self.in_flight.end(grace=seconds * 2 / 3, reply_seconds=seconds / 6)
        if cut:
            log.info("Shutting down: %d questions could not finish; their askers were told", cut)
        await self.close()

    async def guild_speaker(self, guild_id: int) -> Voice:
        """The speaker this guild chose with /voice set, or the configured default."""
        try:
            name = await self.store.voice_preset(guild_id)
        except (SQLAlchemyError, OSError):  # the answer matters more than its voice
            log.exception("Reading guild %s's voice preset failed; speaking with the default voice", guild_id)
            name = None
        preset = PRESETS.get(name or "")
        if preset is None:
            return Voice(self.settings.tts_voice_description, self.settings.tts_seed)
        return Voice(preset.description, preset.seed)

    def new_source(self, text: str) -> StreamingSource:
        """A live audio source for speaking `text` in voice."""
        return StreamingSource(self.sample_rate, ffmpeg=self.ffmpeg, expected_seconds=estimate_seconds(text))

    async def synthesize(self, guild_id: int, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        """The audio of `text`, chunk by chunk, through the speech queue; the wait for the first chunk is the
        `tts_first_audio` stage, for voice channels and voice messages alike. Raises `TTSError` when the voice is
        not loaded, `TTSQueueFull` when the queue has no room."""
        if self.speech is None:
            raise TTSError("the voice is not loaded")
        started = time.perf_counter()
        first = True
        async for chunk in self.speech.stream(guild_id, text, voice):
            if first:
                observe("tts_first_audio", time.perf_counter() - started)
                first = False
            yield chunk

    async def record(self, guild_id: int, text: str, voice: Voice) -> VoiceMessage:
        """Synthesise `text` completely and encode it as a voice message (raises if TTS is not ready)."""
        chunks = [chunk async for chunk in self.synthesize(guild_id, text, voice)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return await run_ffmpeg_work(encode_voice_message, samples, self.sample_rate, ffmpeg=self.ffmpeg)


async def _load_engine_in_background(settings: Settings) -> SpeechEngine:
    """`build_speech_engine` on a daemon thread of its own: unlike `asyncio.to_thread`, a process that stops does
    not wait for a model download or a hung speech server. If the caller is cancelled first, an engine that
    arrives after all is closed, and a load that has not begun never starts."""
    future: concurrent.futures.Future[SpeechEngine] = concurrent.futures.Future()

    def load() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(build_speech_engine(settings))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=load, name="speech-load", daemon=True).start()
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_unused)
        raise


def _close_unused(future: concurrent.futures.Future[SpeechEngine]) -> None:
    """Close the engine a cancelled load delivered anyway."""
    if not future.cancelled() and future.exception() is None:
        log.info("Closing the speech engine that finished loading after the bot closed")
        close_engine(future.result())


def _exit_later(seconds: float) -> None:
    """End the process in `seconds` if it is still running then, whatever it waits for (a daemon timer)."""

    def end() -> None:
        log.warning("The process did not exit within %g seconds of SIGTERM; exiting now", seconds)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()


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
    """Run the bot until it is stopped: Ctrl+C, or SIGTERM (a graceful shutdown within SHUTDOWN_SECONDS; the
    process exits at most EXIT_GRACE_S later whatever is still loading, and at once on a second SIGTERM)."""
    setup_logging(settings.log_level, settings.log_format)
    assert settings.discord_token is not None

    async def main() -> None:
        async with build_bot(settings) as bot:
            terminated = asyncio.Event()
            loop = asyncio.get_running_loop()

            def on_sigterm() -> None:
                loop.remove_signal_handler(signal.SIGTERM)  # back to the default: a second SIGTERM ends it at once
                _exit_later(settings.shutdown_seconds + EXIT_GRACE_S)
                terminated.set()

            if threading.current_thread() is threading.main_thread():  # signal handlers need the main thread
                loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            running = asyncio.create_task(bot.start(settings.discord_token.get_secret_value().strip()))
            waiting = asyncio.create_task(terminated.wait())
            await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if not running.done():
                try:
                    await asyncio.wait_for(bot.shutdown(), settings.shutdown_seconds)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    log.warning("The shutdown took longer than SHUTDOWN_SECONDS; stopping anyway")
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # raises what stopped the bot (e.g. a refused token)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        log.info("Stopped")
