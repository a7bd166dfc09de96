"""Shared fixtures: ffmpeg, the fake Inference API, the tiny Parler-TTS model, settings isolated from .env."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from audio.ffmpeg import ffmpeg_exe
from audio.speech import TTSConfig, speech_stack_problem
from tests.fakes.inference import FakeInference

if TYPE_CHECKING:  # the speech stack is imported only once pytest_sessionstart has checked it
    from audio.speech.reference import TTSEngine
    from audio.speech.server import SpeechServer

pytest_plugins = ["tests.emulator.fixtures", "tests.fakes.postgres"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """A broken speech stack (e.g. a torchaudio built for another torch) is one sentence, not import errors."""
    if (problem := speech_stack_problem()) is not None:
        pytest.exit(problem, returncode=1)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's .env or real tokens, and run speech on the CPU (also on a GPU machine)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    for name in (
        "DISCORD_TOKEN",
        "HF_TOKEN",
        "LLM_BASE_URL",
        "ASR_BASE_URL",
        "LLM_API_KEY",
        "DATABASE_URL",
        "TTS_BASE_URL",
        "TTS_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TTS_DEVICE", "cpu")  # the suite runs its models on the CPU, also on a machine with a GPU
    from bot.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _restored_logging() -> Iterator[None]:
    """Undo the bot's logging set-up after each test: its handlers write to that test's captured stderr, which
    is closed once the test ends; warnings go back to being printed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers and type(handler) is logging.StreamHandler:  # not pytest's capture handlers
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return ffmpeg_exe()


@pytest.fixture
async def fake_inference() -> AsyncIterator[FakeInference]:
    async with FakeInference() as fake:
        yield fake


@pytest.fixture(scope="session")
def tiny_parler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Parler-TTS checkpoint, saved like a downloaded one."""
    from tests.fakes.tiny_parler import build_parler

    return build_parler(tmp_path_factory.mktemp("tiny-parler"))


@pytest.fixture(scope="session")
def tiny_tts_engine(tiny_parler_dir: Path) -> TTSEngine:
    """40 frames (0.46 s) per sentence; chunks of 9 frames first, then 22, with 8 frames of context."""
    from audio.speech.reference import TTSEngine

    config = TTSConfig(model=str(tiny_parler_dir), device="cpu", first_chunk_s=0.1, chunk_s=0.25, context_frames=8)
    return TTSEngine.load(config, frames_per_sentence=40)


@pytest.fixture(scope="session")
def tiny_speech_server(tiny_parler_dir: Path) -> Iterator[SpeechServer]:
    """The serving engine (what `load_engine` returns) on the tiny model, with the same chunking as above."""
    from audio.speech.server import SpeechServer

    config = TTSConfig(model=str(tiny_parler_dir), device="cpu", first_chunk_s=0.1, chunk_s=0.25, context_frames=8)
    server = SpeechServer.load(config, frames_per_sentence=40)
    yield server
    server.close()
