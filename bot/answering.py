"""The answering pipeline: from an admitted question to its answer, whatever the way it was asked.

Transcribe (for audio) → consult the oracle → speak in the guild's voice channel through its player, or else
record a voice message. Progress and the final answer go through a `Reply` (an interaction response, or a reply
message). Cogs parse their interaction or event and call `answer_interaction` or `answer_message`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import discord

from audio.errors import UserFacingError
from audio.formats import AudioInputError, check_size
from audio.tts import Voice
from bot.discord_io import (
    EMBED_COLOUR,
    NO_PINGS,
    audio_file,
    can_send_voice_messages,
    send_voice_message,
    tell,
)
from bot.playback import GuildPlayer, Outcome, QueueFull
from bot.services import audio_limits

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)

LISTENING = "🎧 Listening to your question…"
CONSULTING = "🔮 Consulting the spirits…"
SPEAKING = "🗣️ Speaking…"
RECORDING = "🗣️ Recording the answer…"
OUTCOME_NOTES = {
    Outcome.TTS_FAILED: "The voice faltered, so this answer is text only.",
    Outcome.DROPPED: "The voice connection dropped while I was speaking.",
    Outcome.STOPPED: "Speech was stopped before this answer was finished.",
}
AUDIO_TYPES = ("audio/", "video/ogg", "video/webm", "application/ogg")
AUDIO_EXTENSIONS = {".ogg", ".oga", ".opus", ".mp3", ".wav", ".flac", ".m4a", ".aac", ".webm"}
FIELD_LIMIT = 1024
EmbedMaker = Callable[..., discord.Embed]  # answer_embed with the question and answer bound


class Reply(Protocol):
    """Where one question's progress, answer and errors go."""

    channel: discord.abc.Messageable
    permissions: discord.Permissions  # the bot's, in `channel`

    async def progress(self, text: str) -> None: ...
    async def reveal(self, embed: discord.Embed, file: discord.File | None = None) -> None: ...
    async def fail(self, sentence: str) -> None: ...
    def anchor(self) -> discord.Message | None: ...


class InteractionReply:
    """Progress and answer by editing the (deferred, public) interaction response; errors ephemeral."""

    def __init__(self, interaction: discord.Interaction, asker_message: discord.Message | None) -> None:
        assert interaction.channel is not None
        self.interaction = interaction
        self.channel = interaction.channel
        self.permissions = interaction.app_permissions
        self._asker_message = asker_message
        self._response: discord.Message | None = None

    async def progress(self, text: str) -> None:
        self._response = await self.interaction.edit_original_response(content=text)

    async def reveal(self, embed: discord.Embed, file: discord.File | None = None) -> None:
        attachments = [file] if file is not None else discord.utils.MISSING
        await self.interaction.edit_original_response(content=None, embed=embed, attachments=attachments)

    async def fail(self, sentence: str) -> None:
        await tell(self.interaction, sentence, replace=True)

    def anchor(self) -> discord.Message | None:
        """The message a voice message replies to: the asker's, or else this response."""
        return self._asker_message or self._response


class MessageReply:
    """Progress and answer in one reply to the asker's message (no thread); errors edit that reply."""

    def __init__(self, message: discord.Message, permissions: discord.Permissions) -> None:
        self.message = message
        self.channel = message.channel
        self.permissions = permissions
        self._reply: discord.Message | None = None

    async def _show(
        self, content: str | None, embed: discord.Embed | None = None, file: discord.File | None = None
    ) -> None:
        files = [file] if file is not None else []
        if self._reply is None:
            self._reply = await self.message.reply(
                content, embed=embed, files=files, mention_author=False, allowed_mentions=NO_PINGS
            )
        else:
            self._reply = await self._reply.edit(content=content, embed=embed, attachments=files)

    async def progress(self, text: str) -> None:
        await self._show(text)

    async def reveal(self, embed: discord.Embed, file: discord.File | None = None) -> None:
        await self._show(None, embed, file)

    async def fail(self, sentence: str) -> None:
        await self._show(sentence)

    def anchor(self) -> discord.Message | None:
        return self.message


def is_audio(attachment: discord.Attachment) -> bool:
    """Whether an attachment looks like a recording (by content type, or by extension when there is none)."""
    if attachment.content_type:
        return attachment.content_type.startswith(AUDIO_TYPES)
    return os.path.splitext(attachment.filename)[1].lower() in AUDIO_EXTENSIONS


def question_problem(question: str, max_chars: int) -> str | None:
    """Why a typed question can't be asked, as a sentence."""
    if not question.strip():
        return "Your question is empty: type something to ask."
    if len(question) > max_chars:
        return f"Your question is {len(question):,} characters long; please keep it under {max_chars:,}."
    return None


def audio_problem(attachment: discord.Attachment, bot: MagicBot) -> str | None:
    """Why an attachment can't be used as a question, as a sentence (checked before downloading it)."""
    if not is_audio(attachment):
        return "That file isn't audio: attach a voice recording (ogg, mp3, wav, m4a…)."
    try:
        check_size(attachment.size, audio_limits(bot.settings))
    except AudioInputError as exc:
        return exc.sentence
    limit = bot.settings.max_voice_seconds
    if attachment.duration is not None and attachment.duration > limit:
        return f"That recording is {attachment.duration:.0f} seconds long; the limit is {limit:g} seconds."
    return None


def admit(bot: MagicBot, guild_id: int, member_id: int) -> str | None:
    """Let a question in (then `bot.admission.release(guild_id)` when done), or say why not."""
    player = bot.voice.player(guild_id)
    if player is not None and player.full:
        return f"{player.pending} answers are already waiting to be spoken here; ask again in a moment."
    return bot.admission.admit(guild_id, member_id)


def shorten(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answer_embed(question: str, answer: str, *, transcribed: bool, note: str | None = None) -> discord.Embed:
    """The question (or transcript) and the answer; `note` says what went wrong with the voice."""
    embed = discord.Embed(colour=EMBED_COLOUR)
    embed.add_field(name="🎙️ You said" if transcribed else "❓ You asked", value=shorten(question), inline=False)
    embed.add_field(name="🎱 The ball says", value=shorten(answer), inline=False)
    if note:
        embed.set_footer(text=f"🔇 {note}")
    return embed


@dataclass
class Question:
    """One question on its way to an answer."""

    bot: MagicBot
    reply: Reply
    guild_id: int
    text: str | None = None
    audio: discord.Attachment | None = None

    async def answer(self) -> None:
        """Run the whole pipeline; Discord failures (e.g. the bot was removed) are logged, not raised."""
        try:
            await self._answer()
        except discord.HTTPException as exc:
            log.warning("Answering a question in guild %s failed: %s", self.guild_id, exc)
        finally:
            self.bot.admission.release(self.guild_id)

    async def _answer(self) -> None:
        try:
            question = self.text or await self._transcribe()
            await self.reply.progress(CONSULTING)
            answer = await self.bot.oracle.answer(question)
        except UserFacingError as exc:
            await self.reply.fail(exc.sentence)
            return
        embed = functools.partial(answer_embed, question, answer, transcribed=self.audio is not None)
        if self.bot.voice_status.value:
            await self.reply.reveal(embed(note=self.bot.voice_status.value))
            return
        voice = await self.bot.guild_voice(self.guild_id)
        player = self.bot.voice.player(self.guild_id)
        if player is not None and await self._speak(player, answer, voice, embed):
            return
        await self._record(answer, voice, embed)

    async def _transcribe(self) -> str:
        assert self.audio is not None
        await self.reply.progress(LISTENING)
        try:
            data = await self.audio.read()
        except discord.HTTPException as exc:
            raise AudioInputError("I couldn't download that recording; please post it again.") from exc
        return await self.bot.transcriber.transcribe(data, self.audio.filename)

    async def _speak(self, player: GuildPlayer, answer: str, voice: Voice, embed: EmbedMaker) -> bool:
        """Speak the answer in the voice channel, revealing the text when its audio starts.

        Returns False when there turned out to be no voice connection (the caller records it instead).
        """
        ahead = player.pending + player.busy
        await self.reply.progress(SPEAKING if not ahead else f"⏳ Waiting to speak ({ahead} ahead)…")
        try:
            utterance = player.submit(answer, voice, on_start=lambda: self.reply.reveal(embed()))
        except QueueFull:
            return False
        outcome = await utterance.result
        if outcome is Outcome.NO_VOICE:
            return False
        if outcome is not Outcome.SPOKEN:
            await self.reply.reveal(embed(note=OUTCOME_NOTES[outcome]))
        return True

    async def _record(self, answer: str, voice: Voice, embed: EmbedMaker) -> None:
        """Answer with a native voice message (or an audio file where voice messages aren't allowed)."""
        await self.reply.progress(RECORDING)
        try:
            message = await self.bot.record(self.guild_id, answer, voice)
        except Exception as exc:
            log.warning("Recording an answer failed: %s", exc)
            await self.reply.reveal(embed(note=OUTCOME_NOTES[Outcome.TTS_FAILED]))
            return
        if can_send_voice_messages(self.reply.permissions):
            anchor = self.reply.anchor() if self.reply.permissions.read_message_history else None
            try:
                await send_voice_message(self.reply.channel, message, reply_to=anchor)
            except discord.HTTPException as exc:
                log.warning("Sending a voice message failed (%s); attaching the audio instead", exc)
            else:
                await self.reply.reveal(embed())
                return
        await self.reply.reveal(embed(), audio_file(message))


async def answer_interaction(
    bot: MagicBot,
    interaction: discord.Interaction,
    problem: str | None,
    text: str | None,
    audio: discord.Attachment | None,
    asker_message: discord.Message | None = None,
) -> None:
    """Refuse with an ephemeral sentence, or defer at once and answer."""
    assert interaction.guild_id is not None
    problem = problem or admit(bot, interaction.guild_id, interaction.user.id)
    if problem:
        await tell(interaction, problem)
        return
    question = Question(bot, InteractionReply(interaction, asker_message), interaction.guild_id, text, audio)
    try:
        await interaction.response.defer(thinking=True)
    except discord.HTTPException as exc:
        log.warning("Deferring an interaction failed: %s", exc)
        bot.admission.release(interaction.guild_id)
        return
    await question.answer()


async def answer_message(bot: MagicBot, message: discord.Message, permissions: discord.Permissions) -> None:
    """Answer the voice message `message` with one reply to it."""
    assert message.guild is not None
    reply = MessageReply(message, permissions)
    audio = message.attachments[0]
    problem = audio_problem(audio, bot) or admit(bot, message.guild.id, message.author.id)
    if problem:
        with contextlib.suppress(discord.HTTPException):
            await reply.fail(problem)
        return
    await Question(bot, reply, message.guild.id, audio=audio).answer()
