"""Scenario 5: voice and gateway drops, Inference API errors and REST rate limits: the bot recovers or says so,
and keeps serving later questions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from audio.inference import ModelBusy, ProviderError
from audio.source import FRAME_SECONDS
from audio.speech.server import SpeechServer
from tests.bot.doubles import until
from tests.bot.helpers import Scene, answered, ephemeral_reply, fields, final_embed, join
from tests.e2e.harness import SourceSpy, assert_played_whole, heard, serving
from tests.emulator import DiscordEmulator
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)

LONG_ANSWER = (
    "Still waters run deep. The river does not hurry. Yet it reaches the sea. Patience is bitter. Its fruit is sweet."
)


async def assert_still_speaking(scene: Scene, spy: SourceSpy, engine: SpeechServer, ffmpeg: str) -> None:
    """A new question is answered and spoken whole on the current voice connection."""
    voice = scene.emu.voice(scene.guild.id)
    start, sources = len(voice.packets), len(spy.spoken)
    record = await scene.ask("And now?")
    await record.wait_for(answered, 60)
    packets = await heard(scene.emu, scene.guild.id, start)
    assert "footer" not in final_embed(record)
    assert {p.ssrc for p in packets} == {voice.connections[-1].ssrc}
    assert len(spy.spoken) == sources + 1
    await assert_played_whole(packets, spy.spoken[-1], engine.sample_rate, ffmpeg)


async def test_voice_session_lost_mid_answer_is_finished_or_explained(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    fake_inference.chat_reply = LONG_ANSWER
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        voice = scene.emu.voice(scene.guild.id)
        record = await scene.ask("Will it take long?")
        await scene.emu.wait_for(lambda: len(voice.packets) >= 25, 60)
        await scene.emu.close_voice(scene.guild.id, 4006)  # the voice session is gone: a new one is needed
        await voice.wait_connected(2, 60)
        player = bot.voice.player(scene.guild.id)
        assert player is not None
        await until(lambda: not player.busy, 60)
        await record.wait_for(answered, 30)
        interrupted, heard_frames = spy.spoken[0].source, sum(not p.silence for p in voice.packets)
        fake_inference.chat_reply = "Patience is bitter."
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)

    assert voice.connections[0].close_codes == [4006] and voice.decrypt_failures == 0
    if "footer" in final_embed(record):  # cut off: the asker is told
        assert final_embed(record)["footer"]["text"] == "🔇 The voice connection dropped while I was speaking."
    else:  # the player carried on (over the new session if it was up in time): all of it was heard
        assert heard_frames == interrupted.frames_read + interrupted.underruns
        assert interrupted.frames_read * FRAME_SECONDS >= len(spy.spoken[0].audio) / voiced_engine.sample_rate


async def _resume(emu: DiscordEmulator) -> None:
    await emu.disconnect_gateway(resume=True)


async def _invalid_session(emu: DiscordEmulator) -> None:
    await emu.disconnect_gateway(resume=False)


async def _reconnect(emu: DiscordEmulator) -> None:
    emu.request_reconnect()


@pytest.mark.parametrize(
    ("fault", "resumes", "identifies"),
    [(_resume, 1, 1), (_reconnect, 1, 1)],
    ids=["closed-4000-resume", "op7-reconnect"],
)
async def test_gateway_resume_keeps_speaking(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    ffmpeg: str,
    fault: Callable[[DiscordEmulator], Awaitable[None]],
    resumes: int,
    identifies: int,
) -> None:
    gateway = scene.emu.gateway
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        await join(scene)
        await fault(scene.emu)
        await scene.emu.wait_for(lambda: gateway.resumes == resumes and gateway.ready, 30)
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
    assert (gateway.resumes, gateway.identifies, len(scene.emu.voice(scene.guild.id).connections)) == (1, 1, 1)


async def test_new_gateway_session_rejoins_voice_and_keeps_speaking(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    gateway = scene.emu.gateway
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        await join(scene)
        voice = scene.emu.voice(scene.guild.id)
        await _invalid_session(scene.emu)
        await scene.emu.wait_for(lambda: gateway.identifies == 2 and gateway.ready, 30)
        # The voice session went with the old gateway session: the bot joins its channel again by itself.
        await voice.wait_connected(2, 30)
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
    assert voice.connections[-1].channel_id == scene.lounge.id
    assert gateway.resumes == 0
    assert not [m for m in scene.emu.channel_messages(scene.text.id) if m.voice]


async def test_inference_errors_are_retried_or_explained(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine, inference_retries=1) as (_, spy):
        await join(scene)
        fake_inference.fail(503, headers={"Retry-After": "0.1"})  # busy once: retried after Retry-After
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
        fake_inference.fail(503, times=2)  # still busy after the retry: the asker is told, privately
        assert await ephemeral_reply(await scene.ask("Busy?")) == ModelBusy.SENTENCE
        fake_inference.fail(500)  # not worth retrying
        assert await ephemeral_reply(await scene.ask("Broken?")) == ProviderError.SENTENCE
        assert len(spy.spoken) == 1  # nothing was spoken for the failed questions
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
    chats = [r for r in fake_inference.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 2 + 2 + 1 + 1


async def test_rate_limited_rest_calls_are_retried(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    emu = scene.emu
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        emu.fail_rest("POST", r"^/interactions/\d+/[^/]+/callback", status=429, retry_after=0.2)
        emu.fail_rest("PATCH", r"/messages/@original$", status=429, times=2, retry_after=0.2)
        emu.fail_rest("POST", rf"^/channels/{scene.text.id}/messages$", status=429, retry_after=0.2, is_global=True)
        record = await scene.ask("Slowly?")  # not in voice: the answer comes as a voice message
        await record.wait_for(answered, 60)
        voice_message = await emu.wait_for_message(scene.text.id, lambda m: m.voice, 60)
        await join(scene)
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)

    limited = [r for r in emu.requests if r.status == 429]
    assert len(limited) == 4
    assert record.deferred and fields(final_embed(record))["🎱 The ball says"] == fake_inference.chat_reply
    assert voice_message.attachments[0].duration_secs
