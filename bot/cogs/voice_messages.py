"""Passive answers: voice messages posted in channels an admin enabled (needs the message-content intent)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.cogs.ask import Question, admit, audio_problem
from bot.discord_io import NO_PINGS
from bot.logs import guild_context
from bot.metrics import record_question

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)


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


class VoiceMessagesCog(commands.Cog, name="VoiceMessages"):
    """Answers voice messages in listening channels."""

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        guild = message.guild
        if (
            guild is None
            or message.author.bot
            or not message.flags.voice
            or not message.attachments
            or not self.bot.store.is_listening(message.channel.id)
        ):
            return
        guild_context.set(guild.id)
        permissions = message.channel.permissions_for(guild.me)
        if not (permissions.send_messages and permissions.read_message_history):
            log.info("Can't reply in listening channel %s: missing permissions", message.channel.id)
            return
        reply = MessageReply(message, permissions)
        audio = message.attachments[0]
        problem = audio_problem(audio, self.bot) or admit(self.bot, guild.id, message.author.id)
        if problem:
            record_question("voice_message", "refused")
            with contextlib.suppress(discord.HTTPException):
                await reply.fail(problem)
            return
        await Question(self.bot, reply, guild.id, audio=audio, source="voice_message").answer()


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(VoiceMessagesCog(bot))
