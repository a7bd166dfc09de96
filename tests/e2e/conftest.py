"""End-to-end fixtures: the guild from `tests/bot/conftest.py` and the audible tiny TTS engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from audio.speech.server import SpeechServer
from tests.bot.conftest import scene  # noqa: F401  (the fixture)
from tests.e2e.harness import load_voiced_engine


@pytest.fixture(scope="session")
def voiced_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechServer]:
    """The serving engine on the voiced tiny checkpoint (0.46 s of audio per sentence)."""
    engine = load_voiced_engine(tmp_path_factory.mktemp("voiced-parler"))
    yield engine
    engine.close()
