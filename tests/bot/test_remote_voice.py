"""The bot on a remote speech server that is down: answers fall back to text, as for a local failure."""

from __future__ import annotations

from pathlib import Path

from bot.client import SpeechStatus
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


async def test_a_server_down_at_start_up_leaves_the_answers_text_only(scene: Scene, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tts_enabled=True, tts_base_url=f"http://127.0.0.1:{free_port()}")
    async with running_bot(scene.emu, settings) as bot:
        await until(lambda: bot.speech_status is SpeechStatus.FAILED, 30)
        record = await scene.ask("Can you speak?")
        await record.wait_for(answered, 30)
        assert final_embed(record)["footer"]["text"] == f"🔇 {SpeechStatus.FAILED.note}"


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
