"""Scenario 2: a voice message posted in a listening channel is transcribed, answered and answered back in voice."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from audio.speech import Voice
from audio.speech.server import SpeechServer
from audio.voice_message import waveform
from tests.audio.helpers import decode
from tests.bot.helpers import Scene, fields, spoken_question
from tests.e2e.harness import MIN_CORRELATION, serving, similarity
from tests.emulator.records import VOICE_MESSAGE
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)


async def test_voice_message_in_a_listening_channel_gets_a_voice_reply(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, _):
        enable = await scene.command("channels enable", user=scene.mod)
        await enable.wait_for(lambda r: r.followups, 30)
        asked = await scene.post_voice_message(spoken_question(ffmpeg))
        voice_message = await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice, 60)
        reply = await scene.emu.wait_for_message(
            scene.text.id, lambda m: m.author == scene.emu.bot and m.embeds and not m.voice, 60
        )

    (asr,) = [r for r in fake_inference.requests if r.path == "/asr"]
    assert asr.body.startswith(b"fLaC") and asr.headers.get("Content-Type") == "audio/flac"
    assert [r.path for r in fake_inference.requests].count("/llm/v1/chat/completions") == 1
    assert int(reply.message_reference["message_id"]) == asked.id
    assert fields(reply.embeds[0]) == {
        "🎙️ You said": fake_inference.transcript,
        "🎱 The ball says": fake_inference.chat_reply,
    }
    assert "footer" not in reply.embeds[0]
    assert [e[1].get("content") for e in reply.edits][:2] == ["🔮 Consulting the spirits…", "🗣️ Recording the answer…"]

    assert voice_message.flags == VOICE_MESSAGE and not voice_message.content
    assert int(voice_message.message_reference["message_id"]) == asked.id
    (attachment,) = voice_message.attachments
    assert attachment.part_content_type == "audio/ogg" and attachment.data.startswith(b"OggS")
    said = voiced_engine.synthesize(
        fake_inference.chat_reply, Voice(bot.settings.tts_voice_description, bot.settings.tts_seed)
    )
    assert attachment.duration_secs == pytest.approx(len(said) / voiced_engine.sample_rate)
    assert base64.b64decode(attachment.waveform or "") == waveform(said)
    assert len(waveform(said)) == 256
    value = similarity(decode(attachment.data, ffmpeg), said, voiced_engine.sample_rate, ffmpeg)
    assert value >= MIN_CORRELATION
