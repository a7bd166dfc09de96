"""/voice and /channels through the emulator: Manage Server checks, autocomplete, persistence, listening."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from audio.speech import TTSQueueFull
from bot.presets import PRESETS
from bot.store import GuildStore
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import (
    Scene,
    answered,
    ephemeral_reply,
    fields,
    final_embed,
    make_settings,
    running_bot,
    spoken_question,
)
from tests.emulator.records import MessageRecord
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(90)


async def test_settings_need_manage_server(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:
        for name, options in (("voice set", {"preset": "Laura"}), ("channels enable", {}), ("voice preview", {})):
            reply = await ephemeral_reply(await scene.command(name, options))
            assert reply == "You need the Manage Server permission to do that."
        assert await bot.store.voice_preset(scene.guild.id) is None
        synced = {c["name"]: c for c in scene.emu.commands()}
        assert synced["voice"]["default_member_permissions"] in (32, "32")
        assert synced["channels"]["default_member_permissions"] in (32, "32")


async def test_autocomplete_lists_presets(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)):
        record = await scene.emu.autocomplete(
            scene.guild.id, scene.text.id, scene.mod.id, "voice set", {"preset": "lau"}, focused="preset"
        )
        await record.wait_for_response()
        assert [c["value"] for c in record.choices] == ["Laura", "Lauren"]


async def test_voice_and_channels_survive_a_restart(scene: Scene, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, dev_guild_id=scene.guild.id)
    engine = SineEngine()
    async with running_bot(scene.emu, settings, tts=engine):
        assert {c["name"] for c in scene.emu.commands(scene.guild.id)} >= {"ask", "voice", "Ask the Magic 8 Ball"}
        unknown = await ephemeral_reply(await scene.command("voice set", {"preset": "Nobody"}, user=scene.mod))
        assert unknown == "There is no voice called “Nobody”: pick one from the list."
        done = await scene.command("voice set", {"preset": "laura"}, user=scene.mod)
        await done.wait_for(lambda r: r.followups, 10)
        assert done.followups[0].body["content"] == "🎙️ The ball now speaks as **Laura**."
        enabled = await scene.command("channels enable", {}, user=scene.mod)
        await enabled.wait_for(lambda r: r.followups, 10)
        assert enabled.followups[0].body["content"] == f"👂 I now answer voice messages posted in <#{scene.text.id}>."

    async with running_bot(scene.emu, settings, tts=engine) as bot:
        assert await bot.store.voice_preset(scene.guild.id) == "Laura"
        assert bot.store.is_listening(scene.text.id)
        preview = await scene.command("voice preview", {}, user=scene.mod)
        await preview.wait_for(lambda r: r.followups, 30)
        (message,) = preview.followups
        assert message.body["content"] == "🔊 This is **Laura**." and message.flags & 64
        assert message.attachments[0].filename == "preview.ogg"
        assert engine.spoken[-1][1].description == PRESETS["Laura"].description


async def test_voice_messages_are_answered_in_listening_channels(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    quiet = scene.guild.add_text_channel("quiet")
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr")
    recording = spoken_question(ffmpeg)
    async with running_bot(scene.emu, settings, tts=SineEngine()):
        enabled = await scene.command("channels enable", {}, user=scene.mod)
        await enabled.wait_for(lambda r: r.followups, 10)
        await scene.post_voice_message(recording, quiet)
        asked = await scene.post_voice_message(recording)

        def reply_to(message_id: int, voice: bool) -> object:
            return lambda m: (
                m.message_reference and int(m.message_reference["message_id"]) == message_id and m.voice == voice
            )

        answer = await scene.emu.wait_for_message(
            scene.text.id, lambda m: reply_to(asked.id, False)(m) and m.embeds, 30
        )
        assert fields(answer.embeds[0])["🎙️ You said"] == fake_inference.transcript
        await scene.emu.wait_for_message(scene.text.id, reply_to(asked.id, True), 30)
        assert not [m for m in scene.emu.channel_messages(quiet.id) if m.author == scene.emu.bot]

        disabled = await scene.command("channels disable", {}, user=scene.mod)
        await disabled.wait_for(lambda r: r.followups, 10)
        assert disabled.followups[0].body["content"] == f"🔕 I no longer answer voice messages in <#{scene.text.id}>."


async def test_refusals_of_voice_messages_are_said_once_per_cooldown(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    settings = make_settings(tmp_path, asr_base_url=f"{fake_inference.url}/asr", cooldown_seconds=600)
    recording = spoken_question(ffmpeg)

    def replies_to(message_id: int) -> Callable[[MessageRecord], bool]:
        return lambda m: bool(m.message_reference) and int(m.message_reference["message_id"]) == message_id

    async with running_bot(scene.emu, settings, tts=SineEngine()) as bot:
        await bot.store.enable_channel(scene.guild.id, scene.text.id)
        asked = await scene.post_voice_message(recording)
        await scene.emu.wait_for_message(scene.text.id, lambda m: replies_to(asked.id)(m) and bool(m.embeds), 30)
        refused = [await scene.post_voice_message(recording) for _ in range(4)]
        told = await scene.emu.wait_for_message(scene.text.id, replies_to(refused[0].id), 30)
        assert re.fullmatch(r"Slow down: you can ask again in \d+ seconds\.", told.content)
        other = await scene.emu.post_message(
            scene.text.id,
            scene.mod.id,
            attachments=[("voice-message.ogg", recording, "audio/ogg")],
            voice=True,
            duration_secs=1.5,
        )  # handled after alice's, and answered: others are not held back
        await scene.emu.wait_for_message(scene.text.id, lambda m: replies_to(other.id)(m) and bool(m.embeds), 30)
        assert not [m for m in scene.bot_messages() if any(replies_to(r.id)(m) for r in refused[1:])]


async def test_previews_pass_the_cooldown_and_a_full_speech_queue_says_when_to_retry(
    scene: Scene, tmp_path: Path
) -> None:
    other_mod = scene.guild.add_member("other mod", roles=[scene.guild.roles[scene.mod.roles[0]]])
    async with running_bot(scene.emu, make_settings(tmp_path, cooldown_seconds=60), tts=SineEngine()) as bot:
        first = await scene.command("voice preview", {"preset": "Laura"}, user=scene.mod)
        await first.wait_for(lambda r: r.followups, 30)
        again = await ephemeral_reply(await scene.command("voice preview", {"preset": "Gary"}, user=scene.mod))
        assert re.fullmatch(r"Slow down: you can ask again in \d+ seconds\.", again)
        assert not bot.admission._in_flight

        def full(*args: object) -> None:
            error = TTSQueueFull("The speech queue is full.")
            error.retry_after = 12  # type: ignore[attr-defined]
            raise error

        assert bot.speech is not None
        bot.speech.stream = full  # type: ignore[method-assign]
        busy = await ephemeral_reply(await scene.command("voice preview", {"preset": "Gary"}, user=other_mod))
        assert busy == "The voice is busy, try again in a moment (about 12 seconds)."
        question = await scene.ask("And a question?", user=scene.alice)
        await question.wait_for(answered, 30)
        assert final_embed(question)["footer"]["text"] == "🔇 " + busy
        assert not bot.admission._in_flight


async def test_leaving_a_guild_or_deleting_a_channel_forgets_its_data(scene: Scene, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cooldown_seconds=60)
    other = scene.guild.add_text_channel("other")
    async with running_bot(scene.emu, settings) as bot:
        await bot.store.set_voice_preset(scene.guild.id, "Laura")
        await bot.store.enable_channel(scene.guild.id, scene.text.id)
        await bot.store.enable_channel(scene.guild.id, other.id)
        asked = await scene.ask("Remember me?")
        await asked.wait_for(answered, 30)

        scene.guild.delete_channel(other)
        await until(lambda: not bot.store.is_listening(other.id))
        assert bot.store.listening_channels(scene.guild.id) == [scene.text.id]

        await scene.emu.remove_bot_from_guild(scene.guild.id)
        await until(lambda: not bot.store.listening_channels(scene.guild.id))
        assert bot.admission.tracked_members == 0
        assert await bot.store.voice_preset(scene.guild.id) is None
    store = GuildStore(settings.database_url.get_secret_value())  # nothing is left on disk either
    await store.open()
    try:
        assert store.listening_channels(scene.guild.id) == [] and await store.voice_preset(scene.guild.id) is None
    finally:
        await store.close()
