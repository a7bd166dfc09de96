"""The bot as its own OS process against a test's Discord emulator: `spawn` starts
`python -m tests.fakes.bot_process`, which runs the real `python -m bot` entry point with discord.py pointed at
the emulator (EMULATOR_API, EMULATOR_GATEWAY, and EMULATOR_CA: the emulator's CA as a PEM file)."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import discord
import yarl

import bot.__main__ as cli
import bot.client
from bot.settings import Settings
from tests.emulator import DiscordEmulator
from tests.emulator.server import _tls

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def spawn(emu: DiscordEmulator, tmp_path: Path, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start the bot process for `emu` with `env` on top of test settings (text-only answers, no cooldown, a
    SQLite file in `tmp_path`); its stderr is piped; killed if still running."""
    ca = tmp_path / "emulator-ca.pem"
    _tls()[0].cert_pem.write_to_path(str(ca))
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    settings = {
        "DISCORD_TOKEN": emu.token,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "TTS_ENABLED": "false",
        "COOLDOWN_SECONDS": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.bot_process",
        cwd=tmp_path,
        env={
            **clean,
            "PYTHONPATH": str(ROOT),
            "EMULATOR_API": emu.api_url,
            "EMULATOR_GATEWAY": emu.gateway_url,
            "EMULATOR_CA": str(ca),
            **settings,
            **env,
        },
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


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
