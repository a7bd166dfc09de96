"""The answering pipeline: from an admitted question to its answer, whatever the way it was asked.

Transcribe (for audio) → consult the oracle → speak in the guild's voice channel through its player, or else
record a voice message. Progress and the final answer go through a `Reply` (an interaction response, or a reply
message). Cogs parse their interaction or event and call `answer_interaction`, `answer_message` or `preview`.
Every question ends in its answer or in one sentence that replaces the progress text, and is counted once in
the metrics (`bot.metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import discord

from audio.errors import UserFacingError
from audio.formats import AudioInputError
from audio.inference import InferenceError
from audio.speech import TTSQueueFull, Voice
from audio.text import defang_links, strip_invisible
from bot import metrics
from bot.admission import seconds_phrase
from bot.discord_io import (
    EMBED_COLOUR,
    NO_PINGS,
    audio_file,
    can_send_voice_messages,
    send_voice_message,
    tell,
)
from bot.playback import GuildPlayer, Outcome, PlayerClosed, QueueFull
from bot.questions import QuestionRefused, QuestionRules, Transcript, looks_like_audio
from bot.shutdown import REFUSAL

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
SOMETHING_WENT_WRONG = "Something went wrong on my side; please try again."
SPEECH_BUSY_SECONDS = 30.0  # the wait to announce when the speech queue gives no estimate of its own
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
    """Whether an attachment looks like a recording."""
    return looks_like_audio(attachment.filename, attachment.content_type)


def check_attachment(attachment: discord.Attachment, rules: QuestionRules) -> None:
    """Refuse an attachment that can't be a question, before downloading it (`QuestionRules.check_recording`)."""
    rules.check_recording(attachment.filename, attachment.content_type, attachment.size, attachment.duration)


def audio_problem(attachment: discord.Attachment, rules: QuestionRules) -> str | None:
    """Why an attachment can't be used as a question, as a sentence (checked before downloading it)."""
    try:
        check_attachment(attachment, rules)
    except UserFacingError as exc:
        return exc.sentence
    return None


def admit(bot: MagicBot, guild_id: int, member_id: int) -> str | None:
    """Let a question in (then `bot.admission.release(guild_id)` when done), or say why not.

    The per-guild answer queue is checked first, then the member's cooldown and the guild's questions in flight.
    """
    if bot.closing:  # a graceful shutdown has begun (bot.shutdown)
        return REFUSAL
    player = bot.voice.player(guild_id)
    if player is not None and player.full:
        waiting = "1 answer is" if player.pending == 1 else f"{player.pending} answers are"
        return f"{waiting} already waiting to be spoken here; ask again in about {seconds_phrase(player.wait_seconds)}."
    return bot.admission.admit(guild_id, member_id)


def speech_busy(error: BaseException) -> str:
    """The sentence for a full speech queue, with its wait estimate."""
    wait = getattr(error, "retry_after", None) or SPEECH_BUSY_SECONDS
    return f"The voice is busy, try again in a moment (about {seconds_phrase(wait)})."


def shorten(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def for_display(text: str) -> str:
    """User or model text made inert for an embed: markdown escaped, links and invites not clickable."""
    return discord.utils.escape_markdown(defang_links(strip_invisible(text)), ignore_links=False)


def question_label(transcript: Transcript | None, said_by: str | None = None) -> str:
    """The heading of the question in the answer: what the asker typed, or what the recording's speaker (the
    asker when None; a display name, never a mention) said, noting a cut transcript."""
    if transcript is None:
        return "❓ You asked"
    return f"🎙️ {for_display(said_by) if said_by else 'You'} said{transcript.note}"


def answer_embed(question: str, answer: str, *, label: str, note: str | None = None) -> discord.Embed:
    """The question (or transcript) under `label`, and the answer; `note` says what went wrong with the voice."""
    embed = discord.Embed(colour=EMBED_COLOUR)
    embed.add_field(name=label, value=shorten(for_display(question)), inline=False)
    embed.add_field(name="🎱 The ball says", value=shorten(for_display(answer)), inline=False)
    if note:
        embed.set_footer(text=f"🔇 {note}")
    return embed


@dataclass
class Question:
    """One admitted question on its way to an answer."""

    bot: MagicBot
    reply: Reply
    guild_id: int
    source: metrics.Source
    text: str | None = None
    audio: discord.Attachment | None = None
    said_by: str | None = None  # whose recording `audio` is, when not the asker's own (their display name)
    asked_at: float = field(default_factory=time.perf_counter)
    _revealed: bool = field(default=False, init=False)  # the answer is shown: a later failure keeps it

    async def answer(self) -> None:
        """Run the whole pipeline. Whatever fails, the asker gets one sentence in place of the progress text,
        the question is counted once and the guild's admission is released."""
        outcome: metrics.Outcome = "failed"
        try:
            with self.bot.in_flight.track(self._cut_short):  # a shutdown that can't wait for it tells the asker
                outcome = await self._answer()
        except discord.HTTPException as exc:  # Discord itself refused (e.g. the bot was removed)
            log.warning("Answering a question in guild %s failed: %s", self.guild_id, exc)
        except Exception:
            log.exception("Answering a question in guild %s failed", self.guild_id)
            if not self._revealed:
                with contextlib.suppress(discord.HTTPException):
                    await self.reply.fail(SOMETHING_WENT_WRONG)
        finally:
            seconds = time.perf_counter() - self.asked_at
            metrics.observe("answer", seconds)
            metrics.record_question(self.source, outcome)
            self.bot.admission.release(self.guild_id, seconds)

    async def _cut_short(self, sentence: str) -> None:
        """A shutdown ended this question: tell the asker, unless the answer is already shown."""
        if not self._revealed:
            await self.reply.fail(sentence)

    async def _reveal(self, embed: discord.Embed, file: discord.File | None = None) -> None:
        await self.reply.reveal(embed, file)
        self._revealed = True

    async def _answer(self) -> metrics.Outcome:
        transcript = None
        try:
            if self.text is not None:
                question = self.text
            else:
                transcript = await self._transcribe()
                question = transcript.text
            await self.reply.progress(CONSULTING)
            with metrics.timed("oracle"):
                answer = await self._inference("llm", self.bot.oracle.answer(question))
        except UserFacingError as exc:
            await self.reply.fail(exc.sentence)
            return "refused" if isinstance(exc, (AudioInputError, QuestionRefused)) else "failed"
        label = question_label(transcript, self.said_by)
        embed = functools.partial(answer_embed, question, answer, label=label)
        if not self.bot.speech_status.is_ready:
            await self._reveal(embed(note=self.bot.speech_status.note))
            return "text_only"
        speaker = await self.bot.guild_speaker(self.guild_id)
        player = self.bot.voice.player(self.guild_id)
        if player is not None:
            outcome = await self._speak(player, answer, speaker, embed)
            if outcome is not None:
                return outcome
        return await self._record(answer, speaker, embed)

    async def _inference(self, service: Literal["asr", "llm"], call: Awaitable[str]) -> str:
        """Await an Inference API call, counting its failures by service and kind."""
        try:
            return await call
        except InferenceError as exc:
            metrics.INFERENCE_ERRORS.labels(service=service, kind=type(exc).__name__).inc()
            raise

    async def _transcribe(self) -> Transcript:
        """The recording's transcript, cleaned and cut by the question rules."""
        assert self.audio is not None
        await self.reply.progress(LISTENING)
        async with self.bot.transcriptions:  # bounds the uploads held in memory, all guilds together
            try:
                with metrics.timed("download"):
                    data = await self.audio.read()
            except discord.HTTPException as exc:
                raise AudioInputError("I couldn't download that recording; please post it again.") from exc
            with metrics.timed("transcription"):
                text = await self._inference("asr", self.bot.transcriber.transcribe(data, self.audio.filename))
        return self.bot.questions.transcript(text)

    async def _speak(
        self, player: GuildPlayer, answer: str, speaker: Voice, embed: EmbedMaker
    ) -> metrics.Outcome | None:
        """Speak the answer in the voice channel, revealing the text when its audio starts.

        Returns None when there turned out to be no voice connection (the caller records it instead).
        """
        ahead = player.ahead
        await self.reply.progress(SPEAKING if not ahead else f"⏳ Waiting to speak ({ahead} ahead)…")
        try:
            utterance = player.submit(answer, speaker, on_start=lambda: self._reveal(embed()), asked_at=self.asked_at)
        except (QueueFull, PlayerClosed):  # no room, or the bot left the channel meanwhile: a voice message
            return None
        outcome = await utterance.result
        if outcome is Outcome.NO_VOICE:
            return None
        if outcome is Outcome.SPOKEN:
            return "spoken"
        if outcome is Outcome.SPEECH_BUSY:
            assert utterance.tts_error is not None
            await self._reveal(embed(note=speech_busy(utterance.tts_error)))
        else:
            await self._reveal(embed(note=OUTCOME_NOTES[outcome]))
        return "text_only"

    async def _record(self, answer: str, speaker: Voice, embed: EmbedMaker) -> metrics.Outcome:
        """Answer with a native voice message (or an audio file where voice messages aren't allowed)."""
        await self.reply.progress(RECORDING)
        try:
            message = await self.bot.record(self.guild_id, answer, speaker)
        except TTSQueueFull as exc:
            await self._reveal(embed(note=speech_busy(exc)))
            return "text_only"
        except Exception as exc:
            log.warning("Recording an answer failed: %s", exc)
            await self._reveal(embed(note=OUTCOME_NOTES[Outcome.TTS_FAILED]))
            return "text_only"
        if can_send_voice_messages(self.reply.permissions):
            anchor = self.reply.anchor() if self.reply.permissions.read_message_history else None
            try:
                await send_voice_message(self.reply.channel, message, reply_to=anchor)
            except discord.HTTPException as exc:
                log.warning("Sending a voice message failed (%s); attaching the audio instead", exc)
            else:
                await self._reveal(embed())
                return "voice_message"
        await self._reveal(embed(), audio_file(message))
        return "voice_message"


async def answer_interaction(
    bot: MagicBot,
    interaction: discord.Interaction,
    source: metrics.Source,
    problem: str | None,
    text: str | None,
    audio: discord.Attachment | None,
    asker_message: discord.Message | None = None,
    said_by: str | None = None,
    make_question: Callable[[Reply], Question] | None = None,
) -> None:
    """Refuse with an ephemeral sentence, or defer at once and answer (`make_question`: a Question of another
    kind for the reply, e.g. one that listens in the voice channel)."""
    assert interaction.guild_id is not None
    problem = problem or admit(bot, interaction.guild_id, interaction.user.id)
    if problem:
        metrics.record_question(source, "refused")
        await tell(interaction, problem)
        return
    reply = InteractionReply(interaction, asker_message)
    make = make_question or (lambda reply: Question(bot, reply, interaction.guild_id, source, text, audio, said_by))
    question = make(reply)
    try:
        await interaction.response.defer(thinking=True)
    except discord.HTTPException as exc:
        log.warning("Deferring an interaction failed: %s", exc)
        metrics.record_question(source, "failed")
        bot.admission.release(interaction.guild_id)
        return
    await question.answer()


async def answer_message(bot: MagicBot, message: discord.Message, permissions: discord.Permissions) -> None:
    """Answer the voice message `message` with one reply to it."""
    assert message.guild is not None
    reply = MessageReply(message, permissions)
    audio = message.attachments[0]
    problem = audio_problem(audio, bot.questions) or admit(bot, message.guild.id, message.author.id)
    if problem:
        metrics.record_question("voice_message", "refused")
        if bot.admission.already_told(message.guild.id, message.author.id):
            return  # the member heard why once this cooldown: more voice messages don't make more public replies
        with contextlib.suppress(discord.HTTPException):
            await reply.fail(problem)
        return
    await Question(bot, reply, message.guild.id, "voice_message", audio=audio).answer()


async def preview(bot: MagicBot, interaction: discord.Interaction, name: str, speaker: Voice) -> None:
    """Let a member hear `speaker`: spoken in the voice channel, or else as an ephemeral recording.

    Previews pass the same admission as questions (cooldown, questions in flight, the guild's answer queue)
    and the same speech queue, so they cannot crowd out other servers' answers.
    """
    guild_id = interaction.guild_id
    assert guild_id is not None
    problem = admit(bot, guild_id, interaction.user.id)
    if problem:
        await tell(interaction, problem)
        return
    try:
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = f"Hello, this is {name}. Ask, and the spirits shall answer."
        player = bot.voice.player(guild_id)
        if player is not None and not player.full:
            player.submit(text, speaker)
            await interaction.followup.send(f"🔊 Previewing **{name}** in the voice channel.", ephemeral=True)
            return
        try:
            message = await bot.record(guild_id, text, speaker)
        except TTSQueueFull as exc:
            await tell(interaction, speech_busy(exc), replace=True)
            return
        await interaction.followup.send(
            f"🔊 This is **{name}**.", file=audio_file(message, "preview.ogg"), ephemeral=True
        )
    except discord.HTTPException as exc:
        log.warning("Previewing a voice in guild %s failed: %s", guild_id, exc)
    except Exception:
        log.exception("Previewing a voice in guild %s failed", guild_id)
        await tell(interaction, "The voice faltered; please try the preview again.", replace=True)
    finally:
        bot.admission.release(guild_id)
