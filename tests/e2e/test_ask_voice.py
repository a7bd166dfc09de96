"""Scenario 1: /ask while the bot sits in the asker's voice channel speaks the synthesised answer, which the asker
hears end-to-end encrypted (DAVE), or with transport encryption only on protocol version 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audio.speech import Voice
from audio.speech.server import SpeechServer
from tests.bot.helpers import Scene, answered, fields, final_embed, join
from tests.e2e.harness import FRAMES_PER_SENTENCE, answer_packets, assert_played_whole, serving, settled
from tests.emulator import DiscordEmulator
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("emulator", [True, False], ids=["dave", "version-0"], indirect=True)
async def test_ask_in_voice_speaks_the_synthesised_answer(
    emulator: DiscordEmulator,
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    ffmpeg: str,
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        record = await scene.ask("Should I adopt a dog?")
        await record.wait_for(answered, 60)
        voice = scene.emu.voice(scene.guild.id)
        await voice.wait_for_utterances(1, 60)
        await settled(bot)

    assert record.deferred and not record.ephemeral
    assert record.response_delay is not None and record.response_delay < scene.emu.interaction_deadline
    assert all(event.ok for event in record.events)
    assert [e.body.get("content") for e in record.edits][:2] == ["🔮 Consulting the spirits…", "🗣️ Speaking…"]
    answer = fields(final_embed(record))
    assert answer == {"❓ You asked": "Should I adopt a dog?", "🎱 The ball says": fake_inference.chat_reply}
    assert "footer" not in final_embed(record)

    (spoken,) = spy.spoken
    assert spoken.text == fake_inference.chat_reply
    assert len(spoken.audio) == FRAMES_PER_SENTENCE * 512  # one sentence, every sample fed
    # Same text, voice and seed give the same audio: the bot spoke with the configured voice.
    default = Voice(bot.settings.tts_voice_description, bot.settings.tts_seed)
    np.testing.assert_allclose(spoken.audio, voiced_engine.synthesize(spoken.text, default), atol=1e-5)
    packets = answer_packets(voice.packets)
    assert packets == voice.packets  # nothing else was sent
    await assert_played_whole(packets, spoken, voiced_engine.sample_rate, ffmpeg, dave=emulator.voice_server.dave)
