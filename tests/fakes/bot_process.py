"""`python -m tests.fakes.bot_process`: the real `python -m bot` entry point as its own OS process, with discord.py
pointed at a test's Discord emulator (EMULATOR_API, EMULATOR_GATEWAY, and EMULATOR_CA: its CA's PEM file)."""

from __future__ import annotations

import os
import ssl
import sys

import aiohttp
import discord
import yarl

import bot.__main__ as cli
import bot.client
from bot.settings import Settings


def main() -> int:
    discord.http.Route.BASE = os.environ["EMULATOR_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["EMULATOR_GATEWAY"])
    trusted = ssl.create_default_context(cafile=os.environ["EMULATOR_CA"])
    build_bot = bot.client.build_bot

    def build_emulated_bot(settings: Settings) -> bot.client.MagicBot:
        return build_bot(settings, connector=aiohttp.TCPConnector(ssl=trusted))  # called inside the running loop

    def emulator_token(settings: Settings) -> str:  # the emulator's tokens are not shaped like Discord's
        assert settings.discord_token is not None
        return settings.discord_token.get_secret_value()

    bot.client.build_bot = build_emulated_bot  # type: ignore[assignment]
    cli.check_discord_token = emulator_token
    return cli.main([])


if __name__ == "__main__":
    sys.exit(main())
