"""/ask and "Ask the Magic 8 Ball" through the Discord emulator: answers, progress, voice messages, bad input."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path

import discord
import pytest

from audio.asr import TranscriptionUnavailable
from audio.inference import AuthError, CreditsExhausted, InferenceError, InferenceTimeout, ModelBusy, ProviderError
from audio.oracle import CLASSIC_ANSWERS
from audio.speech import TTSConfig
from bot.client import SpeechStatus
from bot.services import build_oracle
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import (
    Scene,
    answered,
    assert_answered_in_text_only,
    ephemeral_reply,
    fields,
    final_embed,
    make_settings,
    running_bot,
    spoken_question,
)
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(90)


async def test_text_question_is_answered_with_progress_embed_and_voice_message(scene: Scene, tmp_path: Path) -> None:
    engine = SineEngine()
    async with running_bot(scene.emu, make_settings(tmp_path), tts=engine):
        record = await scene.ask("Will it rain @everyone?")
        await record.wait_for(answered, 30)

        assert record.deferred and not record.ephemeral  # a visible "thinking" state, at once
        contents = [e.body.get("content") for e in record.edits]
        assert "🔮 Consulting the spirits…" in contents and "🗣️ Recording the answer…" in contents
        answer = fields(final_embed(record))
        assert answer["❓ You asked"] == "Will it rain @everyone?"
        assert answer["🎱 The ball says"] in CLASSIC_ANSWERS
        assert "footer" not in final_embed(record)

        voice_message = await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)
        (attachment,) = voice_message.attachments
        assert attachment.part_content_type == "audio/ogg" and attachment.data.startswith(b"OggS")
        assert attachment.duration_secs and attachment.duration_secs > 0
        assert len(base64.b64decode(attachment.waveform or "")) <= 256
        assert int(voice_message.message_reference["message_id"]) == record.original.id
        assert [text for text, _ in engine.spoken] == [answer["🎱 The ball says"]]
        for message in [voice_message, *record.messages]:
            assert message.allowed_mentions is not None and message.allowed_mentions["parse"] == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"question": "   "}, "Your question is empty: type something to ask."),
        ({"question": "why?" * 500}, "Your question is 2,000 characters long; please keep it under 300."),
        ({}, "I'm not in a voice channel"),
        ({"audio": ("notes.txt", b"just some text", "text/plain")}, "That file isn't audio"),
        ({"audio": ("big.ogg", b"OggS" + bytes(5000), "audio/ogg")}, "That file is too large (0.0 MiB); the limit"),
    ],
    ids=["empty", "2000-chars", "nothing", "not-audio", "too-large"],
)
async def test_bad_input_is_refused_at_once_and_privately(
    scene: Scene, tmp_path: Path, options: dict, expected: str
) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path, max_voice_bytes=4096)) as bot:
        record = await scene.emu.slash_command(scene.guild.id, scene.text.id, scene.alice.id, "ask", options)
        assert (await ephemeral_reply(record)).startswith(expected)
        assert not record.deferred
        assert not bot.admission._in_flight  # a refused question holds nothing
        follow = await scene.ask("Still there?")
        await follow.wait_for(answered, 30)


async def test_audio_question_is_transcribed_and_answered(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")
    async with running_bot(scene.emu, settings, tts=SineEngine()):
        record = await scene.ask_recording(spoken_question(ffmpeg))
        await record.wait_for(answered, 30)
        contents = [e.body.get("content") for e in record.edits]
        assert contents.index("🎧 Listening to your question…") < contents.index("🔮 Consulting the spirits…")
        assert fields(final_embed(record))["🎙️ You said"] == fake_inference.transcript
        await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)


async def test_corrupt_audio_and_missing_speech_recognition_are_explained(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    corrupt = {"audio": ("q.ogg", b"OggS" + bytes(range(256)) * 8, "audio/ogg")}
    async with running_bot(scene.emu, make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")):
        record = await scene.emu.slash_command(scene.guild.id, scene.text.id, scene.alice.id, "ask", corrupt)
        assert "corrupt" in await ephemeral_reply(record)
    async with running_bot(scene.emu, make_settings(tmp_path)):
        record = await scene.emu.slash_command(scene.guild.id, scene.text.id, scene.alice.id, "ask", corrupt)
        assert await ephemeral_reply(record) == TranscriptionUnavailable.SENTENCE
    assert not fake_inference.requests  # corrupt audio never reaches the Inference API


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (lambda fake: fake.fail(401), AuthError),
        (lambda fake: fake.fail(402), CreditsExhausted),
        (lambda fake: fake.fail(503), ModelBusy),
        (lambda fake: fake.slow(5), InferenceTimeout),
        (lambda fake: fake.malformed(), ProviderError),
    ],
    ids=["auth", "credits", "busy", "timeout", "malformed"],
)
async def test_inference_failures_are_explained_and_the_bot_keeps_serving(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, fault, error: type[InferenceError]
) -> None:
    settings = make_settings(
        tmp_path, llm_base_url=f"{fake_inference.url}/llm", inference_retries=0, inference_timeout=1.0
    )
    async with running_bot(scene.emu, settings, oracle=build_oracle(settings)):
        fault(fake_inference)
        assert await ephemeral_reply(await scene.ask("Will it work?")) == error.SENTENCE
        record = await scene.ask("And now?")
        await record.wait_for(answered, 30)
        assert fields(final_embed(record))["🎱 The ball says"] == "A watched pot never boils."


async def test_cooldown_says_how_long_to_wait(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path, cooldown_seconds=60)):
        first = await scene.ask("One?")
        await first.wait_for(answered, 30)
        refusal = await ephemeral_reply(await scene.ask("Two?"))
        assert re.fullmatch(r"Slow down: you can ask again in (\d+) seconds\.", refusal)
        assert 0 < int(re.findall(r"\d+", refusal)[0]) <= 60
        other = await scene.ask("Mine?", user=scene.mod)  # cooldowns are per member
        await other.wait_for(answered, 30)


async def test_guild_concurrency_is_bounded(scene: Scene, tmp_path: Path, fake_inference: FakeInference) -> None:
    settings = make_settings(tmp_path, llm_base_url=f"{fake_inference.url}/llm", guild_concurrency=1)
    async with running_bot(scene.emu, settings, oracle=build_oracle(settings)):
        fake_inference.slow(3.0)  # the first question stays in flight while the second arrives
        first = await scene.ask("Slow one?")
        await first.wait_for(lambda r: r.deferred, 10)
        refusal = await ephemeral_reply(await scene.ask("Me too?", user=scene.mod))
        assert refusal.startswith("The ball is already pondering a question in this server")
        await first.wait_for(answered, 30)
        after = await scene.ask("Now?", user=scene.mod)
        await after.wait_for(answered, 30)


@pytest.mark.parametrize("message_content", [False, True], ids=["no-content-intent", "content-intent"])
async def test_context_menu_answers_a_voice_message(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str, message_content: bool
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr", message_content_intent=message_content)
    async with running_bot(scene.emu, settings, tts=SineEngine()):
        asked = await scene.post_voice_message(spoken_question(ffmpeg))
        record = await scene.emu.message_command(
            scene.guild.id, scene.text.id, scene.mod.id, "Ask the Magic 8 Ball", asked
        )
        await record.wait_for(answered, 30)
        assert fields(final_embed(record))["🎙️ alice said"] == fake_inference.transcript  # named, not mentioned
        reply = await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)
        assert int(reply.message_reference["message_id"]) == asked.id
        own = await scene.emu.message_command(
            scene.guild.id, scene.text.id, scene.alice.id, "Ask the Magic 8 Ball", asked
        )
        await own.wait_for(answered, 30)
        assert fields(final_embed(own))["🎙️ You said"] == fake_inference.transcript


async def test_context_menu_refuses_messages_without_usable_audio(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path, max_voice_seconds=30)):
        plain = await scene.emu.post_message(scene.text.id, scene.alice.id, "no audio here")
        long = await scene.emu.post_message(
            scene.text.id,
            scene.alice.id,
            attachments=[("voice-message.ogg", b"OggS" + bytes(64), "audio/ogg")],
            voice=True,
            duration_secs=95.0,
        )
        menu = "Ask the Magic 8 Ball"
        record = await scene.emu.message_command(scene.guild.id, scene.text.id, scene.alice.id, menu, plain)
        assert await ephemeral_reply(record) == "That message has no voice message or audio file to answer."
        record = await scene.emu.message_command(scene.guild.id, scene.text.id, scene.alice.id, menu, long)
        assert await ephemeral_reply(record) == "That recording is 95 seconds long; the limit is 30 seconds."


async def test_voice_warms_up_in_the_background(scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = threading.Event()
    engine = SineEngine()

    def slow_load(config: TTSConfig) -> SineEngine:
        assert loaded.wait(30)
        return engine

    monkeypatch.setattr("bot.services.load_engine", slow_load)
    async with running_bot(scene.emu, make_settings(tmp_path, tts_enabled=True)) as bot:
        record = await scene.ask("Are you awake?")
        await record.wait_for(answered, 30)
        assert final_embed(record)["footer"]["text"] == f"🔇 {SpeechStatus.LOADING.value}"
        assert not scene.bot_messages()
        loaded.set()
        await until(lambda: bot.speech_status is SpeechStatus.READY, 30)
        record = await scene.ask("And now?")
        await record.wait_for(answered, 30)
        assert "footer" not in final_embed(record)
        await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)


async def test_tts_failure_still_delivers_the_text(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine(fail_at={"*": 0})):
        record = await scene.ask("Can you speak?")
        await record.wait_for(answered, 30)
        assert_answered_in_text_only(scene, record)


async def test_without_voice_message_permission_the_answer_is_an_audio_file(scene: Scene, tmp_path: Path) -> None:
    scene.guild.set_overwrite(scene.text, scene.guild.bot_role, deny=discord.Permissions(send_voice_messages=True))
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()):
        record = await scene.ask("Quietly?")
        await record.wait_for(answered, 30)
        (attachment,) = record.original.attachments
        assert attachment.filename == "answer.ogg" and attachment.data.startswith(b"OggS")
        assert not scene.bot_messages()


async def test_removal_from_a_guild_mid_answer_does_not_stop_the_bot(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    settings = make_settings(tmp_path, llm_base_url=f"{fake_inference.url}/llm")
    async with running_bot(scene.emu, settings, oracle=build_oracle(settings)) as bot:
        fake_inference.slow(1.0)
        doomed = await scene.ask("Will they keep me?")
        await doomed.wait_for(lambda r: r.edits, 10)
        await scene.emu.remove_bot_from_guild(scene.guild.id)
        await until(lambda: bot.get_guild(scene.guild.id) is None)
        await until(lambda: not bot.admission._in_flight, 30)  # the doomed answer ran its course

        other = scene.emu.add_guild("Second Home")
        general = other.add_text_channel("general")
        bob = other.add_member("bob")
        await until(lambda: bot.get_guild(other.id) is not None)
        record = await scene.emu.slash_command(other.id, general.id, bob.id, "ask", {"question": "Still here?"})
        await record.wait_for(answered, 30)
        assert fields(final_embed(record))["🎱 The ball says"] == "A watched pot never boils."
