"""The speech model's settings reach the engine configuration the same way in the bot and the speech server."""

from __future__ import annotations

import pytest

from audio.speech import TTSConfig
from bot.settings import Settings

ENVIRONMENT = {
    "TTS_MODEL": "parler-tts/parler-tts-large-v1",
    "TTS_DEVICE": "cpu",
    "TTS_DTYPE": "bfloat16",
    "TTS_ATTN_IMPLEMENTATION": "eager",
    "TTS_MAX_BATCH": "4",
    "TTS_MAX_FRAMES": "",  # empty: the default
    "TTS_QUANTIZE": "int8",
    "TTS_CPU_PATH": "packed",
}
EXPECTED = TTSConfig(
    model="parler-tts/parler-tts-large-v1",
    device="cpu",
    dtype="bfloat16",
    attn_implementation="eager",
    max_batch=4,
    max_frames=None,
    quantize="int8",
    cpu_path="packed",
)


def test_the_bot_and_the_speech_server_build_the_same_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from audio.serve import ServeSettings

    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    assert Settings().tts_config() == EXPECTED
    assert ServeSettings().tts_config() == EXPECTED  # the Ray Serve app's replicas


def test_an_unknown_device_is_refused_by_both(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from audio.serve import ServeSettings

    monkeypatch.setenv("TTS_DEVICE", "tpu")
    for settings in (Settings, ServeSettings):
        with pytest.raises(ValidationError, match="tts_device"):
            settings()
