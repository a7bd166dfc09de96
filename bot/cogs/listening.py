"""Asking aloud in the voice channel: /ask with nothing typed or attached, and open mic (/listening voice on|off).

/ask listens to the asking member only, from the start of their speech to the end of it, transcribes that one
utterance and answers it through the usual pipeline. Open mic, where a server turns it on, transcribes what
members in the bot's channel say and answers the utterances that start with the wake phrase ("eight ball…").
Audio stays in memory, for the utterance being cut and transcribed only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from audio.asr import TranscriptionUnavailable
from audio.errors import UserFacingError
from audio.formats import from_pcm16
from audio.inference import InferenceError
from audio.listen.segmenter import SegmenterConfig, Utterance
from audio.listen.wake import after_wake_phrase
from bot import metrics
from bot.answering import Question, Reply, admit, answer_interaction, for_display
from bot.discord_io import NO_PINGS, tell
from bot.questions import QuestionRefused, Transcript
from bot.voice_receive import ListenConfig, ListeningVoiceClient, VoiceReceiver

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)

ADMIN = discord.Permissions(manage_guild=True)
ASK_ALOUD = "🎙️ Ask your question aloud — I'm listening to you"
NOTHING_HEARD = "I didn't hear a question; use /ask again when you're ready to speak, or type it."
RECONNECTED = "The voice connection dropped while I was listening; please ask again."
LEFT = "I left the voice channel, so I stopped listening; please ask again."
MOVED = "I moved to another voice channel, so I stopped listening; please ask again."
STOPPED = "Listening was stopped with /stop."
OPEN_MIC_ON = (
    "👂 Open mic is on: anyone here can ask aloud by starting with “eight ball”, like “eight ball, will it snow?”. "
    "While it is on, what members say here is transcribed; only questions to the ball are answered. "
    "A member with Manage Server turns it off with /listening voice off."
)
OPEN_MIC_STATUS = "👂 Open mic: say “eight ball, …” to ask"


async def transcribe(bot: MagicBot, utterance: Utterance) -> str:
    """The utterance's transcript (encoded in memory, never written to a file; failures are counted by kind)."""
    async with bot.transcriptions:  # the same bound as uploads, all guilds together
        with metrics.timed("transcription"):
            try:
                return await bot.transcriber.transcribe_samples(from_pcm16(utterance.pcm))
            except InferenceError as exc:
                metrics.INFERENCE_ERRORS.labels(service="asr", kind=type(exc).__name__).inc()
                raise


@dataclass
class AloudQuestion(Question):
    """A question asked aloud after /ask: listens to the asker, then answers as any other question."""

    receiver: VoiceReceiver | None = field(default=None, kw_only=True)
    member_id: int = field(default=0, kw_only=True)

    async def _transcribe(self) -> Transcript:
        assert self.receiver is not None
        heard = self.receiver.listen(self.member_id)  # before the progress, so no word is missed meanwhile
        try:
            await self.reply.progress(ASK_ALOUD)
            utterance = await heard
        finally:
            heard.cancel()  # a no-op once it is done; otherwise (e.g. a shutdown) the listen is given up
        if utterance is None:
            raise UserFacingError(NOTHING_HEARD)
        log.info("Heard %.1f s from member %s (%s)", utterance.seconds, self.member_id, utterance.reason)
        transcript = self.bot.questions.transcript(await transcribe(self.bot, utterance))
        await self.reply.progress(f"🎙️ You asked: {for_display(transcript.text)}")
        return transcript


class ChannelReply:
    """Open mic: progress and answer in one message in the voice channel's text chat, naming the asker."""

    def __init__(self, channel: discord.VoiceChannel | discord.StageChannel, member: discord.Member) -> None:
        self.channel = channel
        self.permissions = channel.permissions_for(channel.guild.me)
        self._member = member
        self._message: discord.Message | None = None

    async def _show(self, content: str | None, embed: discord.Embed | None = None, file: discord.File | None = None):
        files = [file] if file is not None else []
        if self._message is None:
            self._message = await self.channel.send(content, embed=embed, files=files, allowed_mentions=NO_PINGS)
        else:
            self._message = await self._message.edit(content=content, embed=embed, attachments=files)

    async def progress(self, text: str) -> None:
        await self._show(f"{self._member.mention} {text}")

    async def reveal(self, embed: discord.Embed, file: discord.File | None = None) -> None:
        await self._show(self._member.mention, embed, file)

    async def fail(self, sentence: str) -> None:
        await self._show(f"{self._member.mention} {sentence}")

    def anchor(self) -> discord.Message | None:
        return self._message


class ListeningCog(commands.Cog, name="Listening"):
    """Questions asked aloud in the bot's voice channel."""

    listening = app_commands.Group(
        name="listening",
        description="Whether the ball listens in its voice channel.",
        guild_only=True,
        default_permissions=ADMIN,
    )

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot
        self._receivers: dict[int, VoiceReceiver] = {}
        self._open_mic_tasks: set[asyncio.Task[None]] = set()
        settings = bot.settings
        self.config = ListenConfig(
            start_seconds=settings.listen_start_seconds,
            segmenter=SegmenterConfig(
                silence_seconds=settings.listen_silence_seconds, max_seconds=settings.listen_max_seconds
            ),
            max_members=settings.listen_max_members,
        )

    async def cog_load(self) -> None:
        self.bot.voice.listens = self

    async def cog_unload(self) -> None:
        for guild_id in list(self._receivers):
            self._close(guild_id, LEFT)
        for task in list(self._open_mic_tasks):
            task.cancel()

    # -- Listens (what /stop sees) ---------------------------------------------------------------------
    def count(self, guild_id: int) -> int:
        """/asks waiting for their question in the guild."""
        receiver = self._receivers.get(guild_id)
        return receiver.asks if receiver is not None else 0

    def stop(self, guild_id: int) -> None:
        """/stop: the /asks under way end (open mic goes on)."""
        receiver = self._receivers.get(guild_id)
        if receiver is not None:
            receiver.end(STOPPED)

    # -- receivers -------------------------------------------------------------------------------------
    def _receiver(self, guild: discord.Guild) -> VoiceReceiver | None:
        """The guild's receiver on its current voice connection (made on first use)."""
        client = guild.voice_client
        if not isinstance(client, ListeningVoiceClient) or not client.is_connected():
            return None
        receiver = self._receivers.get(guild.id)
        if receiver is not None and receiver.client is not client:
            self._close(guild.id, RECONNECTED)
            receiver = None
        if receiver is None:
            receiver = VoiceReceiver(
                client,
                self.config,
                on_utterance=lambda user_id, utterance: self._heard(guild.id, user_id, utterance),
                reconnected_sentence=RECONNECTED,
            )
            self._receivers[guild.id] = receiver
        return receiver

    def _close(self, guild_id: int, sentence: str) -> None:
        receiver = self._receivers.pop(guild_id, None)
        if receiver is not None:
            receiver.close(sentence)

    # -- /ask aloud ------------------------------------------------------------------------------------
    def aloud_problem(self, guild: discord.Guild, member: discord.Member) -> str | None:
        """Why `member` can't ask aloud now, as a sentence."""
        if not self.bot.settings.listen_enabled:
            return "Asking aloud is turned off for this bot: type your question with /ask question:."
        client = guild.voice_client
        if not isinstance(client, ListeningVoiceClient) or not client.is_connected():
            return "I'm not in a voice channel: /join first to ask aloud, or type your question with /ask question:."
        channel = client.channel
        if member.voice is None or member.voice.channel != channel:
            where = channel.mention if isinstance(channel, discord.abc.GuildChannel) else "my voice channel"
            return f"Join {where} to ask aloud, or type your question with /ask question:."
        if not self.bot.transcriber.available:
            return TranscriptionUnavailable.SENTENCE
        receiver = self._receivers.get(guild.id)
        if receiver is not None and receiver.listening_to(member.id):
            return "I'm already listening to you: say your question."
        return None

    async def ask_aloud(self, interaction: discord.Interaction) -> None:
        """/ask with no question and no file: listen to the asker in the voice channel."""
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        problem = self.aloud_problem(guild, member)
        receiver = None if problem else self._receiver(guild)

        def make(reply: Reply) -> Question:
            return AloudQuestion(self.bot, reply, guild.id, "voice_channel", receiver=receiver, member_id=member.id)

        await answer_interaction(self.bot, interaction, "voice_channel", problem, None, None, make_question=make)

    # -- open mic --------------------------------------------------------------------------------------
    @listening.command(name="voice", description="Open mic: members in my voice channel may ask aloud.")
    @app_commands.describe(state="on: answer “eight ball, …” said in my voice channel; off: only /ask listens")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def voice_command(self, interaction: discord.Interaction, state: Literal["on", "off"]) -> None:
        guild = interaction.guild
        assert guild is not None
        if state == "on" and not self.bot.settings.listen_enabled:
            await tell(interaction, "Listening is turned off for this bot, so open mic can't be turned on.")
            return
        await interaction.response.defer(ephemeral=True)
        on = state == "on"
        await self.bot.store.set_open_mic(guild.id, on)
        receiver = self._receiver(guild)
        if receiver is not None:
            receiver.open_mic = on
        if on:
            text = "👂 Open mic is on: members in my voice channel can ask aloud by starting with “eight ball”."
            if receiver is not None and isinstance(receiver.client.channel, discord.VoiceChannel):
                await self._announce(receiver.client.channel)
        else:
            text = "🔕 Open mic is off: I only listen to a member who asks with /ask."
        await interaction.followup.send(text, ephemeral=True)

    async def _announce(self, channel: discord.VoiceChannel) -> None:
        """Say in the channel's text chat (and its voice status, where allowed) that open mic is on."""
        permissions = channel.permissions_for(channel.guild.me)
        try:
            if permissions.send_messages:
                await channel.send(OPEN_MIC_ON, allowed_mentions=NO_PINGS)
            if permissions.set_voice_channel_status:
                await self.bot.http.edit_voice_channel_status(OPEN_MIC_STATUS, channel_id=channel.id)
        except discord.HTTPException as exc:
            log.warning("Announcing open mic in %s failed: %s", channel.id, exc)

    def _heard(self, guild_id: int, user_id: int, utterance: Utterance) -> None:
        """Open mic: an utterance ended; transcribe it (and answer it if it asks the ball) in its own task."""
        task = asyncio.create_task(self._open_mic_question(guild_id, user_id, utterance))
        self._open_mic_tasks.add(task)
        task.add_done_callback(self._open_mic_tasks.discard)

    async def _open_mic_question(self, guild_id: int, user_id: int, utterance: Utterance) -> None:
        guild = self.bot.get_guild(guild_id)
        member = guild.get_member(user_id) if guild is not None else None
        client = guild.voice_client if guild is not None else None
        channel = client.channel if client is not None else None
        if member is None or member.bot or not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
            return
        try:
            transcript = await transcribe(self.bot, utterance)
        except UserFacingError as exc:  # unclear speech or the service failing: chatter is never answered
            log.info("Open mic: an utterance in guild %s was not transcribed: %s", guild_id, exc)
            return
        question = after_wake_phrase(transcript)
        if not question:
            return  # chatter (or the wake phrase alone): transcribed, not answered
        reply = ChannelReply(channel, member)
        try:
            question = self.bot.questions.typed(question)
        except QuestionRefused as exc:
            problem = exc.sentence
        else:
            problem = admit(self.bot, guild_id, user_id)
        if problem:
            metrics.record_question("voice_channel", "refused")
            with contextlib.suppress(discord.HTTPException):
                await reply.fail(problem)
            return
        await Question(self.bot, reply, guild_id, "voice_channel", text=question).answer()

    # -- following the bot's voice connection ----------------------------------------------------------
    @commands.Cog.listener()
    async def on_voice_joined(self, channel: discord.VoiceChannel | discord.StageChannel) -> None:
        """The bot joined (or moved to) `channel`: open mic starts there if the server turned it on."""
        guild = channel.guild
        if not self.bot.settings.listen_enabled or not await self.bot.store.open_mic(guild.id):
            return
        receiver = self._receiver(guild)
        if receiver is not None and not receiver.open_mic:
            receiver.open_mic = True
            if isinstance(channel, discord.VoiceChannel):
                await self._announce(channel)

    @commands.Cog.listener()
    async def on_voice_left(self, guild_id: int) -> None:
        self._close(guild_id, LEFT)

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """The bot moved to another channel, or its voice connection dropped (discord.py leaves and rejoins
        for a new voice session; /leave ends listens through `on_voice_left` first): what it heard ends."""
        me = self.bot.user
        if me is None or member.id != me.id or before.channel is None or after.channel == before.channel:
            return
        receiver = self._receivers.get(member.guild.id)
        if receiver is not None:
            receiver.end(MOVED if after.channel is not None else RECONNECTED)


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(ListeningCog(bot))
