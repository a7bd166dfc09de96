"""The bot on a remote speech server that is down: answers fall back to text, as for a local failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from bot.client import SpeechStatus
from tests.audio.test_remote_speech import FakeSpeechAPI, pcm, ramp, serving, start_pcm
from tests.bot.doubles import until
from tests.bot.helpers import (
    Scene,
    answered,
    assert_answered_in_text_only,
    final_embed,
    make_settings,
    running_bot,
)
from tests.fakes.speech_app import free_port


async def test_a_server_down_at_start_up_leaves_the_answers_text_only_until_it_comes_up(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.client.LOAD_RETRY_S", (0.05, 0.5))  # the backoff, short for the test

    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request, 24000)
        await response.write(pcm(ramp(12000)))
        await response.write_eof()
        return response

    port = free_port()
    settings = make_settings(tmp_path, tts_enabled=True, tts_base_url=f"http://127.0.0.1:{port}", tts_model="parler")
    async with running_bot(scene.emu, settings) as bot:
        await until(lambda: bot.speech_status is SpeechStatus.FAILED, 30)
        assert bot.speech_problem() == SpeechStatus.FAILED.note  # /healthz says so
        record = await scene.ask("Can you speak?")
        await record.wait_for(answered, 30)
        assert final_embed(record)["footer"]["text"] == f"🔇 {SpeechStatus.FAILED.note}"

        async with serving(FakeSpeechAPI(speech, {"data": [{"id": "parler", "sample_rate": 24000}]}), port=port):
            await until(lambda: bot.speech_status is SpeechStatus.READY, 30)  # the loader tried again
            assert bot.speech_problem() == "" and bot.sample_rate == 24000
            record = await scene.ask("And now?")
            await record.wait_for(answered, 30)
            assert "footer" not in final_embed(record)
            await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)


async def test_a_server_that_goes_away_makes_the_voice_falter(scene: Scene, tmp_path: Path) -> None:
    # With the rate configured the bot starts without asking the server; the first answer finds it gone.
    url = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path, tts_enabled=True, tts_base_url=url, tts_sample_rate=24000)
    async with running_bot(scene.emu, settings) as bot:
        await until(lambda: bot.speech_status is SpeechStatus.READY, 30)
        assert bot.sample_rate == 24000
        record = await scene.ask("Can you speak?")
        await record.wait_for(answered, 30)
        assert_answered_in_text_only(scene, record)
