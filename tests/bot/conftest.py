"""Fixtures for the bot's tests: the emulated guild."""

from __future__ import annotations

import discord
import pytest

from tests.bot.helpers import Scene
from tests.emulator import DiscordEmulator
from tests.emulator.fixtures import emulator  # noqa: F401  (the fixture)


@pytest.fixture
def scene(emulator: DiscordEmulator) -> Scene:  # noqa: F811
    guild = emulator.add_guild("Oracle Guild")
    text = guild.add_text_channel("general")
    lounge = guild.add_voice_channel("Lounge")
    alice = guild.add_member("alice")
    mod = guild.add_member("mod", roles=[guild.add_role("Mods", discord.Permissions(manage_guild=True))])
    return Scene(emulator, guild, text, lounge, alice, mod)
