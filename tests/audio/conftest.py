"""TTS fixtures: a tiny random-weight Parler-TTS checkpoint, loaded through the bot's own loading code."""

from __future__ import annotations

from pathlib import Path

import pytest

from audio.tts import TTSConfig, TTSEngine
from tests.fakes.tiny_parler import build_parler


@pytest.fixture(scope="session")
def tiny_parler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_parler(tmp_path_factory.mktemp("tiny-parler"))


@pytest.fixture(scope="session")
def tiny_tts_engine(tiny_parler_dir: Path) -> TTSEngine:
    """40 frames (0.46 s) per sentence; chunks of 9 frames first, then 22, with 8 frames of context."""
    config = TTSConfig(model=str(tiny_parler_dir), first_chunk_s=0.1, chunk_s=0.25, context_frames=8)
    return TTSEngine.load(config, frames_per_sentence=40)
