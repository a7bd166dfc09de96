"""Scenario 5: voice and gateway drops, Inference API errors and REST rate limits: the bot recovers or says so,
and keeps serving later questions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from audio.inference import ModelBusy, ProviderError
from audio.source import FRAME_SECONDS
from audio.tts import TTSEngine
from tests.bot.conftest import Scene
from tests.bot.test_ask import ephemeral_reply, fields, final_embed
from tests.e2e.harness import SourceSpy, answered, assert_played_whole, heard, join, serving
from tests.emulator import DiscordEmulator
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)

LONG_ANSWER = (
    "Still waters run deep. The river does not hurry. Yet it reaches the sea. Patience is bitter. Its fruit is sweet."
)


async def assert_still_speaking(scene: Scene, spy: SourceSpy, engine: TTSEngine, ffmpeg: str) -> None:
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


async def test_voice_session_lost_mid_answer_reconnects_and_finishes_it(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: TTSEngine, ffmpeg: str
) -> None:
    fake_inference.chat_reply = LONG_ANSWER
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        await join(scene)
        voice = scene.emu.voice(scene.guild.id)
        record = await scene.ask("Will it take long?")
        await scene.emu.wait_for(lambda: len(voice.packets) >= 25, 60)
        await scene.emu.close_voice(scene.guild.id, 4006)  # the voice session is gone: a new one is needed
        await voice.wait_connected(2, 60)
        packets = await heard(scene.emu, scene.guild.id)
        await record.wait_for(answered, 30)
        fake_inference.chat_reply = "Patience is bitter."
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)

    old, new = voice.connections
    assert old.close_codes == [4006] and {p.ssrc for p in packets} == {old.ssrc, new.ssrc}
    # The player waited for the new session and went on where it was: the whole answer was heard.
    interrupted = spy.spoken[0].source
    assert sum(not p.silence for p in packets) == interrupted.frames_read + interrupted.underruns
    assert interrupted.frames_read * FRAME_SECONDS >= len(spy.spoken[0].audio) / voiced_engine.sample_rate
    assert "footer" not in final_embed(record)


async def _resume(emu: DiscordEmulator) -> None:
    await emu.disconnect_gateway(resume=True)


async def _invalid_session(emu: DiscordEmulator) -> None:
    await emu.disconnect_gateway(resume=False)


async def _reconnect(emu: DiscordEmulator) -> None:
    emu.request_reconnect()


@pytest.mark.parametrize(
    ("fault", "resumes", "identifies"),
    [(_resume, 1, 1), (_reconnect, 1, 1), (_invalid_session, 0, 2)],
    ids=["closed-4000-resume", "op7-reconnect", "invalid-session"],
)
async def test_gateway_reconnects_and_questions_are_still_spoken(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: TTSEngine,
    ffmpeg: str,
    fault: Callable[[DiscordEmulator], Awaitable[None]],
    resumes: int,
    identifies: int,
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        await join(scene)
        gateway = scene.emu.gateway
        await fault(scene.emu)
        await scene.emu.wait_for(lambda: gateway.resumes + gateway.identifies == 1 + resumes + (identifies - 1), 30)
        await scene.emu.wait_until_connected(30)
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
    assert (gateway.resumes, gateway.identifies) == (resumes, identifies)


async def test_inference_errors_are_retried_or_explained(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: TTSEngine, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine, inference_retries=1) as (_, spy):
        await join(scene)
        fake_inference.fail(503, headers={"Retry-After": "0.1"})  # busy once: retried after Retry-After
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
        fake_inference.fail(503, times=2)  # still busy after the retry: the asker is told, privately
        assert await ephemeral_reply(await scene.ask("Busy?")) == ModelBusy.user_message
        fake_inference.fail(500)  # not worth retrying
        assert await ephemeral_reply(await scene.ask("Broken?")) == ProviderError.user_message
        assert len(spy.spoken) == 1  # nothing was spoken for the failed questions
        await assert_still_speaking(scene, spy, voiced_engine, ffmpeg)
    chats = [r for r in fake_inference.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 2 + 2 + 1 + 1


async def test_rate_limited_rest_calls_are_retried(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: TTSEngine, ffmpeg: str
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
