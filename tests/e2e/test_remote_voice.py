"""Scenario: the bot speaks through a remote speech server (TTS_BASE_URL → the Ray Serve app on this machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from audio.speech import Voice, synthesize
from audio.speech.remote import RemoteEngine
from audio.speech.server import SpeechServer
from bot.client import SpeechStatus
from tests.bot.doubles import until
from tests.bot.helpers import Scene, answered, join
from tests.e2e.harness import FRAMES_PER_SENTENCE, answer_packets, assert_played_whole, serving
from tests.fakes.inference import FakeInference
from tests.fakes.speech_app import local_speech_app

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def speech_app(voiced_engine: SpeechServer) -> Iterator[str]:
    """The Ray Serve app running the voiced tiny checkpoint, with the engine settings of `voiced_engine`."""
    with local_speech_app(Path(voiced_engine.config.model), api_key="e2e-key") as url:
        yield url


async def test_ask_in_voice_through_the_speech_server(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    speech_app: str,
    ffmpeg: str,
) -> None:
    remote = {
        "tts_enabled": True,
        "tts_base_url": speech_app,
        "tts_api_key": "e2e-key",
        "tts_model": voiced_engine.config.model,
    }
    async with serving(scene, tmp_path, fake_inference, None, **remote) as (bot, spy):  # type: ignore[arg-type]
        await until(lambda: bot.speech_status is SpeechStatus.READY, 60)
        assert isinstance(bot.speech._engine, RemoteEngine)  # type: ignore[union-attr]
        assert bot.sample_rate == voiced_engine.sample_rate  # learnt from the server's /v1/models
        await join(scene)
        record = await scene.ask("Should I adopt a dog?")
        await record.wait_for(answered, 60)
        voice = scene.emu.voice(scene.guild.id)
        await voice.wait_for_utterances(1, 60)

    (spoken,) = spy.spoken
    assert spoken.text == fake_inference.chat_reply
    assert len(spoken.chunks) > 1  # fed as it streamed in
    assert len(spoken.audio) == FRAMES_PER_SENTENCE * 512
    # The server's audio for the configured voice and seed, through 16-bit PCM.
    default = Voice(bot.settings.tts_voice_description, bot.settings.tts_seed)
    np.testing.assert_allclose(spoken.audio, synthesize(voiced_engine, spoken.text, default), atol=1e-4)
    packets = answer_packets(voice.packets)
    assert packets == voice.packets
    await assert_played_whole(packets, spoken, voiced_engine.sample_rate, ffmpeg)
