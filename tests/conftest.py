"""Shared fixtures: the ffmpeg binary, the fake Inference API, settings isolated from the developer's .env."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from audio.ffmpeg import ffmpeg_exe
from tests.fakes.inference import FakeInference

pytest_plugins = ["tests.emulator.fixtures"]


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's .env or real tokens."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    for name in ("DISCORD_TOKEN", "HF_TOKEN", "LLM_BASE_URL", "ASR_BASE_URL", "LLM_API_KEY", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    from bot.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return ffmpeg_exe()


@pytest.fixture
async def fake_inference() -> AsyncIterator[FakeInference]:
    async with FakeInference() as fake:
        yield fake
