"""The answering pipeline (bot/answering.py) through the emulator: failures, sanitising, transcripts, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError

from audio.asr import Transcriber
from audio.errors import UserFacingError
from audio.oracle import CLASSIC_ANSWERS
from bot.answering import SOMETHING_WENT_WRONG, for_display
from bot.services import build_transcriber
from tests.bot.doubles import SineEngine
from tests.bot.helpers import (
    Scene,
    answered,
    ephemeral_reply,
    fields,
    final_embed,
    join,
    make_settings,
    running_bot,
    spoken_question,
)
from tests.emulator.records import MessageRecord
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(90)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


async def test_an_unexpected_error_replaces_the_public_progress_with_one_private_sentence(
    scene: Scene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()) as bot:

        async def locked(guild_id: int) -> None:
            raise OperationalError("SELECT voice_preset", {}, Exception("database is locked"))

        bot.guild_speaker = locked  # type: ignore[method-assign]
        record = await scene.ask("Will the database hold?")
        assert await ephemeral_reply(record) == SOMETHING_WENT_WRONG  # and the public placeholder is deleted
        assert not answered(record)
        assert not bot.admission._in_flight
    (logged,) = tracebacks(caplog)
    assert "database is locked" in logged.getMessage() + str(logged.exc_info[1])


async def test_an_unreadable_voice_preset_still_answers_in_the_default_voice(scene: Scene, tmp_path: Path) -> None:
    engine = SineEngine()
    async with running_bot(scene.emu, make_settings(tmp_path), tts=engine) as bot:

        async def locked(guild_id: int) -> None:
            raise OperationalError("SELECT voice_preset", {}, Exception("database is locked"))

        bot.store.voice_preset = locked  # type: ignore[method-assign]
        record = await scene.ask("Will the database hold?")
        await record.wait_for(answered, 30)
        assert fields(final_embed(record))["🎱 The ball says"] in CLASSIC_ANSWERS
        ((_, voice),) = engine.spoken
        assert (voice.description, voice.seed) == (bot.settings.tts_voice_description, bot.settings.tts_seed)


async def test_an_unexpected_error_on_a_voice_message_edits_the_progress_reply(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")
    async with running_bot(scene.emu, settings) as bot:
        await bot.store.enable_channel(scene.guild.id, scene.text.id)

        async def disk_full(data: bytes, filename: str | None = None) -> str:
            raise OSError(28, "No space left on device")

        bot.transcriber.transcribe = disk_full  # type: ignore[method-assign]
        asked = await scene.post_voice_message(spoken_question(ffmpeg))

        def final_reply(message: MessageRecord) -> bool:
            reference = message.message_reference or {}
            return int(reference.get("message_id", 0)) == asked.id and message.content == SOMETHING_WENT_WRONG

        await scene.emu.wait_for_message(scene.text.id, final_reply, 30)
        await scene.emu.wait_for(lambda: not bot.admission._in_flight, 10, "the question released")
    assert len(tracebacks(caplog)) == 1


async def test_mentioning_the_bot_answers_and_logs_nothing(
    scene: Scene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)):
        await scene.emu.post_message(scene.text.id, scene.alice.id, f"<@{scene.emu.bot.id}> hello")
        follow = await scene.ask("Still fine?")  # the mention was handled before this question
        await follow.wait_for(answered, 30)
        assert not scene.bot_messages()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_questions_are_shown_inert_and_invisible_only_questions_are_empty(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path, max_question_chars=500)):
        phishing = "[Claim your free Nitro](https://evil.example/login) # HUGE discord.gg/free\u200b?"
        record = await scene.ask(phishing)
        await record.wait_for(answered, 30)
        shown = fields(final_embed(record))["❓ You asked"]
        assert "](https://" not in shown and "https://" not in shown and "discord.gg/" not in shown
        assert "evil[.]example" in shown and "\u200b" not in shown and "\\[Claim" in shown
        empty = await scene.ask("\u200b\u200d\u2060\ufeff")
        assert await ephemeral_reply(empty) == "Your question is empty: type something to ask."


def test_for_display_escapes_markdown_and_defangs_links() -> None:
    assert for_display("# HUGE") == "\\# HUGE"
    assert for_display("**bold** https://x.example/a") == "\\*\\*bold\\*\\* https[:]//x[.]example/a"
    assert for_display("join discord.gg/abc\u202e") == "join discord[.]gg/abc"


async def test_long_transcripts_are_cut_and_say_so(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    fake_inference.transcript = "Will it rain tomorrow? " * 20
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr", max_question_chars=50)
    async with running_bot(scene.emu, settings):
        record = await scene.ask_recording(spoken_question(ffmpeg))
        await record.wait_for(answered, 30)
        said = fields(final_embed(record))
        assert said["🎙️ You said (the first 50 characters)"] == fake_inference.transcript[:50]


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_one_question_is_counted_once_with_its_stages(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")
    counted = {"source": "slash", "outcome": "voice_message"}
    stages = ("download", "transcription", "oracle", "tts_first_audio", "answer")
    before = {stage: sample("magic8ball_stage_seconds_count", {"stage": stage}) for stage in stages}
    questions = sample("magic8ball_questions_total", counted)
    refused = sample("magic8ball_questions_total", {"source": "slash", "outcome": "refused"})
    async with running_bot(scene.emu, settings, tts=SineEngine()):
        record = await scene.ask_recording(spoken_question(ffmpeg))
        await record.wait_for(answered, 30)
        await scene.emu.wait_for(lambda: sample("magic8ball_questions_total", counted) > questions, 10, "the count")
        assert await ephemeral_reply(await scene.ask("   ")) == "Your question is empty: type something to ask."
    assert sample("magic8ball_questions_total", counted) == questions + 1
    assert sample("magic8ball_questions_total", {"source": "slash", "outcome": "refused"}) == refused + 1
    for stage in stages:
        assert sample("magic8ball_stage_seconds_count", {"stage": stage}) == before[stage] + 1, stage


async def test_inference_errors_are_counted_by_service_and_kind(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr", inference_retries=0)
    labels = {"service": "asr", "kind": "CreditsExhausted"}
    before = sample("magic8ball_inference_errors_total", labels)
    async with running_bot(scene.emu, settings):
        fake_inference.fail(402)
        record = await scene.ask_recording(spoken_question(ffmpeg))
        assert "inference credits" in await ephemeral_reply(record)
    assert sample("magic8ball_inference_errors_total", labels) == before + 1


async def test_transcriptions_are_bounded_across_guilds(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr", max_concurrent_transcriptions=1)
    transcriber = build_transcriber(settings)
    active, most = 0, 0

    class Counting(Transcriber):
        async def transcribe(self, data: bytes, filename: str | None = None) -> str:
            nonlocal active, most
            active += 1
            most = max(most, active)
            try:
                await asyncio.sleep(0.3)
                return await super().transcribe(data, filename)
            finally:
                active -= 1

    others = [scene.emu.add_guild(f"Guild {i}") for i in range(2)]
    places = [(g, g.add_text_channel("general"), g.add_member("asker")) for g in others]
    recording = spoken_question(ffmpeg)
    async with running_bot(scene.emu, settings, transcriber=Counting(transcriber.config)):
        records = [
            await scene.emu.slash_command(g.id, c.id, m.id, "ask", {"audio": ("q.ogg", recording, "audio/ogg")})
            for g, c, m in places
        ]
        for record in records:
            await record.wait_for(answered, 60)
    assert most == 1
    assert all(fields(final_embed(r))["🎱 The ball says"] in CLASSIC_ANSWERS for r in records)


PROJECT = tuple(str(Path(__file__).resolve().parents[2] / part) + os.sep for part in ("bot", "audio"))


def from_project() -> str | None:
    """The innermost project frame (bot/ or audio/) of the current call, if any."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(PROJECT):
            return f"{frame.filename}:{frame.lineno}"
    return None


async def test_a_spoken_voice_question_never_blocks_the_event_loop(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    ffmpeg: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    blocking: list[tuple[str, str]] = []

    def guard(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            where = from_project() if threading.get_ident() == loop_thread else None
            if where is not None:
                blocking.append((name, where))
            return real(*args, **kwargs)

        return guarded

    # Process starts and file writes from project code on the loop's thread, whatever they cost this time.
    monkeypatch.setattr(subprocess.Popen, "__init__", guard("Popen", subprocess.Popen.__init__))
    monkeypatch.setattr(Path, "write_bytes", guard("write_bytes", Path.write_bytes))
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", guard("NamedTemporaryFile", tempfile.NamedTemporaryFile))
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    caplog.set_level(logging.WARNING, logger="asyncio")
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")
    try:
        async with running_bot(scene.emu, settings, tts=SineEngine()):
            await join(scene)
            record = await scene.ask_recording(spoken_question(ffmpeg))
            await record.wait_for(answered, 60)
            await scene.emu.voice(scene.guild.id).wait_for_utterances(1, 60)
    finally:
        loop.set_debug(False)
    assert blocking == []
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and " took " in r.getMessage()]
    assert not [message for message in slow if any(part in message for part in PROJECT)]


async def test_any_user_facing_error_is_the_one_sentence_the_asker_gets(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:

        async def asleep(question: str) -> str:
            raise UserFacingError("The spirits are asleep; ask again at dawn.")

        bot.oracle.answer = asleep  # type: ignore[method-assign]
        assert await ephemeral_reply(await scene.ask("Are you there?")) == "The spirits are asleep; ask again at dawn."


async def test_a_spoken_answer_is_counted_with_its_first_audio_and_voice_packet(scene: Scene, tmp_path: Path) -> None:
    spoken = {"source": "slash", "outcome": "spoken"}
    before = sample("magic8ball_questions_total", spoken)
    stages = ("tts_first_audio", "first_voice_packet")
    counts = {stage: sample("magic8ball_stage_seconds_count", {"stage": stage}) for stage in stages}
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()):
        await join(scene)
        record = await scene.ask("Say it?")
        await record.wait_for(answered, 60)
        await scene.emu.wait_for(lambda: sample("magic8ball_questions_total", spoken) > before, 30, "the count")
    assert sample("magic8ball_questions_total", spoken) == before + 1
    for stage in stages:
        assert sample("magic8ball_stage_seconds_count", {"stage": stage}) == counts[stage] + 1, stage
