"""/ask (typed or recorded) and the "Ask the Magic 8 Ball" message command."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from audio.errors import UserFacingError
from bot.answering import answer_interaction, audio_problem, check_attachment, is_audio
from bot.questions import QuestionRefused

if TYPE_CHECKING:
    from bot.client import MagicBot


class AskCog(commands.Cog, name="Ask"):
    """Questions asked through application commands."""

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Ask the Magic 8 Ball", callback=self.ask_message)
        app_commands.guild_only(self.menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(
        name="ask", description="Ask the Magic 8 Ball a question: typed, recorded, or aloud in its voice channel."
    )
    @app_commands.describe(question="Your question", audio="A recording of your question")
    @app_commands.guild_only()
    async def ask(
        self,
        interaction: discord.Interaction,
        question: str | None = None,
        audio: discord.Attachment | None = None,
    ) -> None:
        if question is None and audio is None:  # asked aloud in the voice channel
            await self.bot.listening.ask_aloud(interaction)
            return
        problem = None
        try:
            if (question is None) == (audio is None):
                raise QuestionRefused("Ask with either a typed question or an audio recording (one of the two).")
            if question is not None:
                question = self.bot.questions.typed(question)
            if audio is not None:
                check_attachment(audio, self.bot.questions)
        except UserFacingError as exc:
            problem = exc.sentence
        await answer_interaction(self.bot, interaction, "slash", problem, question, audio)

    async def ask_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The "Ask the Magic 8 Ball" message command: answers the voice message (or audio file) in it, labelled
        with its author's name when that is another member."""
        audio = next((a for a in message.attachments if is_audio(a)), None)
        problem = (
            "That message has no voice message or audio file to answer."
            if audio is None
            else audio_problem(audio, self.bot.questions)
        )
        said_by = None if message.author.id == interaction.user.id else message.author.display_name
        await answer_interaction(self.bot, interaction, "menu", problem, None, audio, message, said_by)


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(AskCog(bot))
