"""Scenario 1: /ask while the bot is in the asker's voice channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from audio.tts import TTSEngine
from tests.bot.test_ask import fields, final_embed
from tests.e2e.conftest import MIN_CORRELATION, Scene, answer_packets, answered, correlation, join, serving
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)


async def test_ask_in_voice_speaks_the_synthesised_answer(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, tiny_tts_engine: TTSEngine, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, tiny_tts_engine) as (bot, spy):
        await join(scene)
        record = await scene.ask("Should I adopt a dog?")
        await record.wait_for(answered, 60)
        voice = scene.emu.voice(scene.guild.id)
        (utterance,) = await voice.wait_for_utterances(1, 60)
        print(record.response_delay, [e.kind for e in record.events], len(voice.packets), utterance)
        (spoken,) = spy.spoken
        packets = answer_packets(voice.packets)
        print(len(packets), spoken.source.underruns, spoken.source.frames_read, len(spoken.audio)/44100)
        print(await correlation(packets, spoken.audio, tiny_tts_engine.sample_rate, ffmpeg))
        print(fields(final_embed(record)))
        assert 0
