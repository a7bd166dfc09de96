"""The bot's side of speech health: the loader never outlives the bot, and `/healthz` reads the engine's health."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from audio.oracle import Oracle, OracleConfig
from audio.speech import EngineHealth
from bot.client import SpeechStatus, build_bot
from bot.monitoring import health_problems
from bot.settings import Settings
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import Scene, make_settings, running_bot

pytestmark = pytest.mark.timeout(90)


class AilingEngine(SineEngine):
    """A sine engine that reports `problem` through the health interface."""

    problem = ""

    def health(self) -> EngineHealth:
        return EngineHealth(self.problem)


async def test_healthz_reports_an_engine_that_reports_a_fault(scene: Scene, tmp_path: Path) -> None:
    engine = AilingEngine()
    async with running_bot(scene.emu, make_settings(tmp_path), tts=engine) as bot:
        assert bot.speech_status is SpeechStatus.READY and "tts" not in await health_problems(bot)
        engine.problem = "a speech codec call has been running for 31 seconds"
        assert (await health_problems(bot))["tts"] == (
            "The voice is not working: a speech codec call has been running for 31 seconds."
        )
        engine.problem = ""
        assert "tts" not in await health_problems(bot)


async def test_an_engine_that_loads_after_the_bot_closed_is_closed(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loading, release = threading.Event(), threading.Event()
    late = SineEngine()

    def slow_load(settings: Settings) -> SineEngine:
        loading.set()
        assert release.wait(60)
        return late

    monkeypatch.setattr("bot.client.build_speech_engine", slow_load)
    async with running_bot(scene.emu, make_settings(tmp_path, tts_enabled=True)) as bot:
        assert await asyncio.to_thread(loading.wait, 30)
    assert bot.is_closed() and not late.closed
    release.set()  # the load thread finishes after the bot has gone
    await until(lambda: late.closed, 30)
    assert bot.engine is None and bot.speech is None


async def test_a_shutdown_during_start_up_never_starts_the_voice(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Settings] = []
    monkeypatch.setattr("bot.client.build_speech_engine", lambda settings: loads.append(settings) or SineEngine())
    bot = build_bot(
        make_settings(tmp_path, tts_enabled=True), connector=scene.emu.connector(), oracle=Oracle(OracleConfig())
    )
    opening, opened = asyncio.Event(), asyncio.Event()
    open_store = bot.store.open

    async def slow_open(*args: Any) -> None:
        opening.set()
        await opened.wait()
        await open_store(*args)

    monkeypatch.setattr(bot.store, "open", slow_open)
    starting = asyncio.create_task(bot.start(scene.emu.token))
    try:
        await asyncio.wait_for(opening.wait(), 30)  # setup_hook is opening the store when SIGTERM arrives
        await bot.shutdown()
        opened.set()  # setup_hook goes on after close()
        await asyncio.wait({starting}, timeout=30)
        assert bot._tts_loader is None and bot.speech_status is SpeechStatus.DISABLED
        assert loads == []
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await bot.close()
