"""Asking aloud in the voice channel: far-end members speak (RTP under transport encryption, SPEAKING), the bot
listens, the fake ASR receives the utterance, the answer is heard at the far end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest

from audio.speech.server import SpeechServer
from bot import metrics
from bot.client import MagicBot
from bot.cogs.listening import (
    ASK_ALOUD,
    LEFT,
    MOVED,
    NOTHING_HEARD,
    OPEN_MIC_ON,
    OPEN_MIC_STATUS,
    RECONNECTED,
    STOPPED,
)
from tests.audio.helpers import decode
from tests.bot.helpers import Scene, answered, ephemeral_reply, fields, final_embed, join
from tests.e2e.harness import serving
from tests.emulator import DiscordEmulator
from tests.emulator.speaker import FarEndSpeaker, Impairment
from tests.fakes.audio_files import speechlike
from tests.fakes.inference import FakeInference

SET_VOICE_CHANNEL_STATUS = discord.Permissions(set_voice_channel_status=True).value

pytestmark = pytest.mark.timeout(180)

SAMPLE_RATE = 48_000


def spoken(seconds: float, seed: int = 0) -> np.ndarray:
    """A question: a little silence, `seconds` of speech-like sound, a little silence (float, 48 kHz)."""
    silence = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    return np.concatenate([silence, speechlike(seconds, seed=seed), silence[: SAMPLE_RATE // 5]])


async def until(predicate: Callable[[], Any], timeout: float = 30, what: str = "a condition") -> Any:
    """Wait for a condition of the bot's own state (which the emulator is not told about)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return result


async def speaker_for(scene: Scene, bot: MagicBot, user_id: int) -> FarEndSpeaker:
    """A far-end speaker for a member, whose SSRC the bot already knows."""
    speaker = FarEndSpeaker(scene.emu.voice_server, scene.guild.id, user_id)
    await speaker.announce()
    voice = bot.get_guild(scene.guild.id).voice_client  # type: ignore[union-attr]
    await until(lambda: voice.ssrc_users.get(speaker.ssrc) == user_id, what="the bot to map the SSRC")
    return speaker


def asr_requests(fake: FakeInference) -> list:
    return [r for r in fake.requests if r.path.startswith("/asr")]


def oracle_requests(fake: FakeInference) -> list:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


def seconds_sent(fake: FakeInference, ffmpeg: str) -> list[float]:
    """The duration of each recording the fake ASR received."""
    return [len(decode(r.body, ffmpeg)) / SAMPLE_RATE for r in asr_requests(fake)]


def questions(source: str, outcome: str) -> float:
    return metrics.QUESTIONS.labels(source=source, outcome=outcome)._value.get()


async def listening(record: Any) -> None:
    await record.wait_for(lambda r: any(e.body.get("content") == ASK_ALOUD for e in r.edits), 30)


async def alice_asks(scene: Scene, bot: MagicBot) -> tuple[FarEndSpeaker, Any]:
    """alice, in the bot's channel with a far-end speaker, runs /ask; returns once the bot listens to her."""
    speaker = await speaker_for(scene, bot, scene.alice.id)
    record = await scene.command("ask")
    await listening(record)
    return speaker, record


@pytest.mark.parametrize("emulator", [True, False], ids=["dave", "version-0"], indirect=True)
async def test_a_member_asks_aloud_and_hears_the_answer(
    emulator: DiscordEmulator,
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    ffmpeg: str,
) -> None:
    before = questions("voice_channel", "spoken")
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        request = scene.emu.voice_requests[-1]
        assert not request.self_deaf  # a bot that may listen shows it
        speaker, record = await alice_asks(scene, bot)
        await speaker.speak(spoken(1.5))
        await record.wait_for(answered, 60)
        voice = scene.emu.voice(scene.guild.id)
        await voice.wait_for_utterances(1, 60)
        session = bot.get_guild(scene.guild.id).voice_client._connection.dave_session  # type: ignore[union-attr]
        if emulator.voice_server.dave:  # the member's frames were end-to-end encrypted, and opened with the MLS key
            stats = session.get_decryption_stats(scene.alice.id)
            assert stats is not None and stats.successes >= 50 and stats.failures <= 5
        else:
            assert session is None
        await until(lambda: questions("voice_channel", "spoken") == before + 1, what="the answer to be counted")

    contents = [e.body.get("content") for e in record.edits]
    assert contents[:3] == [ASK_ALOUD, "🎙️ You asked: Should I adopt a dog?", "🔮 Consulting the spirits…"]
    assert fields(final_embed(record)) == {
        "🎙️ You said": fake_inference.transcript,
        "🎱 The ball says": fake_inference.chat_reply,
    }
    (heard,) = seconds_sent(fake_inference, ffmpeg)
    assert 1.4 <= heard <= 2.0  # the 1.5 s spoken, with at most 0.2 s kept on either side
    (answer,) = spy.spoken
    assert answer.text == fake_inference.chat_reply and answer.source.end_reason == "finished"


async def test_only_the_asker_is_transcribed_while_another_member_talks(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    bob = scene.guild.add_member("bob")
    async with serving(scene, tmp_path, fake_inference, None) as (bot, _):
        await join(scene)
        await scene.emu.set_voice_state(scene.guild.id, bob.id, scene.lounge.id)
        alice, other = await speaker_for(scene, bot, scene.alice.id), await speaker_for(scene, bot, bob.id)
        record = await scene.command("ask")
        await listening(record)
        await asyncio.gather(alice.speak(spoken(1.0)), other.speak(spoken(3.0, seed=1)))
        await record.wait_for(answered, 60)
        receiver = bot.listening._receivers[scene.guild.id]
        assert not receiver._streams  # nobody's audio is decoded any more

    (heard,) = seconds_sent(fake_inference, ffmpeg)
    assert 0.9 <= heard <= 1.5  # alice's second, not bob's three


async def test_silence_gets_one_sentence(scene: Scene, tmp_path: Path, fake_inference: FakeInference) -> None:
    async with serving(scene, tmp_path, fake_inference, None, listen_start_seconds=1.0) as (bot, _):
        await join(scene)
        speaker, record = await alice_asks(scene, bot)
        await speaker.speak(np.zeros(SAMPLE_RATE, np.float32))  # an open microphone in a quiet room
        assert await ephemeral_reply(record) == NOTHING_HEARD
    assert not asr_requests(fake_inference)


async def test_a_monologue_is_cut_at_the_longest_question(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, None, listen_max_seconds=3.0) as (bot, _):
        await join(scene)
        speaker, record = await alice_asks(scene, bot)
        talking = asyncio.create_task(speaker.speak(speechlike(60.0), speed=4.0))
        await record.wait_for(answered, 60)
        assert not talking.done()  # answered while the member still talks
        talking.cancel()
    (heard,) = seconds_sent(fake_inference, ffmpeg)
    assert heard == pytest.approx(3.0, abs=0.05)


async def test_five_percent_loss_and_reordering_still_transcribe(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, None) as (bot, _):
        await join(scene)
        speaker, record = await alice_asks(scene, bot)
        await speaker.speak(spoken(2.0), impairment=Impairment(loss=0.05, reorder=0.05, seed=4))
        await record.wait_for(answered, 60)
    (heard,) = seconds_sent(fake_inference, ffmpeg)
    assert 1.8 <= heard <= 2.5
    assert fields(final_embed(record))["🎙️ You said"] == fake_inference.transcript


async def test_a_voice_reconnect_mid_listen_ends_it_with_one_sentence(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    async with serving(scene, tmp_path, fake_inference, None) as (bot, _):
        await join(scene)
        speaker, record = await alice_asks(scene, bot)
        talking = asyncio.create_task(speaker.speak(speechlike(10.0)))
        receiver = bot.listening._receivers[scene.guild.id]
        await until(lambda: any(s.speaking for s in receiver._streams.values()), what="speech to start")
        await scene.emu.close_voice(scene.guild.id, 4006)  # the session is gone: discord.py connects anew
        assert await ephemeral_reply(record) == RECONNECTED
        talking.cancel()
        await scene.emu.voice(scene.guild.id).wait_connected(2, 30)
        assert not receiver.asks and not receiver._streams
    assert not asr_requests(fake_inference)


async def test_stop_ends_a_listen_and_members_elsewhere_are_told_to_join(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    bob = scene.guild.add_member("bob")
    async with serving(scene, tmp_path, fake_inference, None):
        elsewhere = await scene.command("ask", user=bob)
        assert (await ephemeral_reply(elsewhere)).startswith("I'm not in a voice channel")
        await join(scene)
        outside = await scene.command("ask", user=bob)
        assert await ephemeral_reply(outside) == (
            f"Join <#{scene.lounge.id}> to ask aloud, or type your question with /ask question:."
        )
        record = await scene.command("ask")
        await listening(record)
        stop = await scene.command("stop")
        await stop.wait_for(lambda r: r.callback is not None, 30)
        assert stop.callback.data["content"] == "⏹️ Stopped 0 answers and stopped listening."
        assert await ephemeral_reply(record) == STOPPED


async def test_moving_or_leaving_ends_a_listen_with_one_sentence(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    cellar = scene.guild.add_voice_channel("Cellar")
    async with serving(scene, tmp_path, fake_inference, None):
        await join(scene)
        record = await scene.command("ask")
        await listening(record)
        await scene.command("leave")
        assert await ephemeral_reply(record) == LEFT

        await join(scene)
        record = await scene.command("ask")
        await listening(record)
        await scene.emu.set_voice_state(scene.guild.id, scene.mod.id, cellar.id)
        await scene.command("join", user=scene.mod)  # the bot moves to the mod's channel
        assert await ephemeral_reply(record) == MOVED


async def test_open_mic_answers_the_wake_phrase_and_only_transcribes_chatter(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        switch = await scene.command("listening voice", {"state": "on"}, user=scene.mod)
        await switch.wait_for(lambda r: r.followups, 30)
        announcement = await scene.emu.wait_for(
            lambda: [m for m in scene.emu.channel_messages(scene.lounge.id) if m.content == OPEN_MIC_ON], 30
        )
        assert len(announcement) == 1
        assert await bot.store.open_mic(scene.guild.id)
        speaker = await speaker_for(scene, bot, scene.alice.id)

        fake_inference.transcript = "I think it will rain tomorrow"
        await speaker.speak(spoken(1.0))
        await until(lambda: len(asr_requests(fake_inference)) == 1, what="the chatter's transcription")

        fake_inference.transcript = "Eight ball, will it snow?"
        await speaker.speak(spoken(1.2, seed=2))

        def answer_message() -> Any:
            return [m for m in scene.emu.channel_messages(scene.lounge.id) if m.embeds]

        (message,) = await scene.emu.wait_for(answer_message, 60, "the open-mic answer")
        await scene.emu.voice(scene.guild.id).wait_for_utterances(1, 60)

    assert len(asr_requests(fake_inference)) == 2  # both transcribed
    assert len(oracle_requests(fake_inference)) == 1  # only the question to the ball was answered
    assert {f["name"]: f["value"] for f in message.embeds[0]["fields"]} == {
        "❓ You asked": "will it snow?",
        "🎱 The ball says": fake_inference.chat_reply,
    }
    assert f"<@{scene.alice.id}>" in (message.content or "")
    assert [s.text for s in spy.spoken] == [fake_inference.chat_reply]  # one answer spoken, none for chatter
    lounge = [m for m in scene.emu.channel_messages(scene.lounge.id) if m.author == scene.emu.bot]
    assert len(lounge) == 2  # the announcement and the answer: nothing for the chatter


async def test_open_mic_is_announced_when_the_bot_joins_and_can_be_turned_off(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    bot_role = scene.guild.bot_role
    scene.guild.set_role_permissions(bot_role, bot_role.permissions | SET_VOICE_CHANNEL_STATUS)
    async with serving(scene, tmp_path, fake_inference, None) as (bot, _):
        switch = await scene.command("listening voice", {"state": "on"}, user=scene.mod)
        await switch.wait_for(lambda r: r.followups, 30)
        assert not scene.emu.channel_messages(scene.lounge.id)  # not in voice yet: nothing to announce
        await join(scene)
        await scene.emu.wait_for(
            lambda: [m for m in scene.emu.channel_messages(scene.lounge.id) if m.content == OPEN_MIC_ON], 30
        )
        await scene.emu.wait_for(lambda: scene.lounge.voice_status == OPEN_MIC_STATUS, 30)  # where it may
        receiver = bot.listening._receivers[scene.guild.id]
        assert receiver.open_mic
        off = await scene.command("listening voice", {"state": "off"}, user=scene.mod)
        await off.wait_for(lambda r: r.followups, 30)
        assert off.followups[0].body["content"].startswith("🔕 Open mic is off")
        assert not receiver.open_mic and not await bot.store.open_mic(scene.guild.id)
    assert len(scene.emu.channel_messages(scene.lounge.id)) == 1  # announced once


async def test_open_mic_is_off_by_default_and_needs_manage_server(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    async with serving(scene, tmp_path, fake_inference, None) as (bot, _):
        await join(scene)
        speaker = await speaker_for(scene, bot, scene.alice.id)
        fake_inference.transcript = "Eight ball, will it snow?"
        await speaker.speak(spoken(1.0))
        refused = await scene.command("listening voice", {"state": "on"})  # alice lacks Manage Server
        assert "Manage Server" in await ephemeral_reply(refused)
        assert not await bot.store.open_mic(scene.guild.id)
    assert not fake_inference.requests  # nothing was transcribed
    assert not [m for m in scene.emu.channel_messages(scene.lounge.id) if m.author == scene.emu.bot]


async def test_with_listening_off_the_bot_joins_deafened_and_never_listens(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    async with serving(scene, tmp_path, fake_inference, None, listen_enabled=False) as (bot, _):
        await join(scene)
        assert scene.emu.voice_requests[-1].self_deaf
        record = await scene.command("ask")
        assert (await ephemeral_reply(record)).startswith("Asking aloud is turned off for this bot")
        switch = await scene.command("listening voice", {"state": "on"}, user=scene.mod)
        assert (await ephemeral_reply(switch)).startswith("Listening is turned off for this bot")
        assert not bot.listening._receivers
