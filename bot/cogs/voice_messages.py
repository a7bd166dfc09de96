"""Passive answers: voice messages posted in channels an admin enabled (needs the message-content intent)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.answering import answer_message
from bot.logs import guild_context

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)


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
        await answer_message(self.bot, message, permissions)


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(VoiceMessagesCog(bot))
