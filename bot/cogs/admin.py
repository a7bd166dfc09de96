"""Per-guild settings: /voice set|preview and /channels enable|disable (Manage Server), stored per guild."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from audio.speech import Voice
from bot.answering import preview
from bot.discord_io import tell
from bot.presets import find_preset, search_presets

if TYPE_CHECKING:
    from bot.client import MagicBot

ADMIN = discord.Permissions(manage_guild=True)
ListeningChannel = discord.TextChannel | discord.VoiceChannel
_REPLY_PERMISSIONS = ("view_channel", "send_messages", "read_message_history")


async def preset_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete over the named voices."""
    return [app_commands.Choice(name=p.name, value=p.name) for p in search_presets(current)]


def unknown_preset(name: str) -> str:
    return f"There is no voice called “{name}”: pick one from the list."


class SettingsCog(commands.Cog, name="Settings"):
    """Per-guild settings, for members with Manage Server."""

    voice = app_commands.Group(
        name="voice", description="The Magic 8 Ball's voice.", guild_only=True, default_permissions=ADMIN
    )
    channels = app_commands.Group(
        name="channels",
        description="Channels where posted voice messages are answered.",
        guild_only=True,
        default_permissions=ADMIN,
    )

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot

    @voice.command(name="set", description="Choose the voice the ball speaks with.")
    @app_commands.describe(preset="A named voice")
    @app_commands.autocomplete(preset=preset_choices)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def voice_set(self, interaction: discord.Interaction, preset: str) -> None:
        assert interaction.guild_id is not None
        found = find_preset(preset)
        if found is None:
            await tell(interaction, unknown_preset(preset))
            return
        await interaction.response.defer(ephemeral=True)
        await self.bot.store.set_voice_preset(interaction.guild_id, found.name)
        await interaction.followup.send(f"🎙️ The ball now speaks as **{found.name}**.", ephemeral=True)

    @voice.command(name="preview", description="Hear a voice (the current one if you pick none).")
    @app_commands.describe(preset="A named voice")
    @app_commands.autocomplete(preset=preset_choices)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def voice_preview(self, interaction: discord.Interaction, preset: str | None = None) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        found = find_preset(preset) if preset is not None else None
        if preset is not None and found is None:
            await tell(interaction, unknown_preset(preset))
            return
        if not self.bot.speech_status.is_ready:
            await tell(interaction, self.bot.speech_status.note)
            return
        if found is not None:
            name, speaker = found.name, Voice(found.description, found.seed)
        else:
            name = await self.bot.store.voice_preset(guild_id) or "the default voice"
            speaker = await self.bot.guild_speaker(guild_id)
        await preview(self.bot, interaction, name, speaker)

    @channels.command(name="enable", description="Answer voice messages posted in a channel.")
    @app_commands.describe(channel="The channel (this one if you pick none)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channels_enable(self, interaction: discord.Interaction, channel: ListeningChannel | None = None) -> None:
        target = channel or interaction.channel
        guild = interaction.guild
        assert guild is not None
        if not isinstance(target, (discord.TextChannel, discord.VoiceChannel)):
            await tell(interaction, "Pick a text channel to listen in.")
            return
        permissions = target.permissions_for(guild.me)
        missing = [name for name in _REPLY_PERMISSIONS if not getattr(permissions, name)]
        await interaction.response.defer(ephemeral=True)
        added = await self.bot.store.enable_channel(guild.id, target.id)
        parts = [
            f"👂 I now answer voice messages posted in {target.mention}."
            if added
            else f"I already answer voice messages in {target.mention}."
        ]
        if missing:
            names = ", ".join(name.replace("_", " ").title() for name in missing)
            parts.append(f"To reply there I still need: {names}.")
        if not self.bot.intents.message_content:
            parts.append(
                "This bot runs without the message-content intent, so it can't hear posted voice messages until "
                "its owner turns that on; the “Ask the Magic 8 Ball” message command works meanwhile."
            )
        await interaction.followup.send(" ".join(parts), ephemeral=True)

    @channels.command(name="disable", description="Stop answering voice messages posted in a channel.")
    @app_commands.describe(channel="The channel (this one if you pick none)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channels_disable(self, interaction: discord.Interaction, channel: ListeningChannel | None = None) -> None:
        target = channel or interaction.channel
        assert target is not None
        await interaction.response.defer(ephemeral=True)
        removed = await self.bot.store.disable_channel(target.id)
        mention = f"<#{target.id}>"
        await interaction.followup.send(
            f"🔕 I no longer answer voice messages in {mention}."
            if removed
            else f"I wasn't answering voice messages in {mention}.",
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """Removed from a guild: forget its settings, listening channels and cooldowns."""
        self.bot.admission.forget_guild(guild.id)
        await self.bot.store.forget_guild(guild.id)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        """A deleted channel stops being a listening channel."""
        await self.bot.store.forget_channel(channel.id)


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(SettingsCog(bot))
