"""Scenario: the call changes under a spoken answer (a member joins, another leaves): the bot commits each change
and keeps speaking, and every member in the call hears the whole answer end-to-end encrypted."""

from __future__ import annotations

from pathlib import Path

import pytest

from audio.speech.server import SpeechServer
from tests.bot.helpers import Scene, answered, join
from tests.e2e.harness import assert_played_whole, heard, serving
from tests.emulator.dave import E2E, Hearing
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(240)

# 4.6 s of audio (10 sentences, within the 200 characters an answer may have): the membership changes happen well
# inside it, even on a loaded machine.
LONG_ANSWER = (
    "Still waters run deep. The river does not hurry. Yet it reaches the sea. Patience is bitter. "
    "Its fruit is sweet. The night is long. The dawn will come. Tides turn. Moons wane. Stars stay."
)


async def test_members_join_and_leave_while_the_bot_speaks(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    fake_inference.chat_reply = LONG_ANSWER
    call = scene.emu.call(scene.lounge.id)
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        await scene.emu.wait_for(lambda: call.secured and bot.user.id in call.members, 20, "the encrypted call")
        voice = scene.emu.voice(scene.guild.id)
        record = await scene.ask("Will the call hold?")
        await scene.emu.wait_for(lambda: len(voice.packets) >= 15, 120, "the answer under way")
        epoch = call.epoch
        await scene.emu.set_voice_state(scene.guild.id, scene.mod.id, scene.lounge.id)
        await scene.emu.wait_for(lambda: call.epoch > epoch and call.secured, 20, "the mod committed in")
        player = bot.voice.player(scene.guild.id)
        assert player is not None and player.busy  # still speaking
        (mod,) = [m for m in call.far_end if m.user_id == scene.mod.id]
        hearing = mod.heard.setdefault(bot.user.id, Hearing())
        await scene.emu.wait_for(lambda: len(hearing.since_first_e2e) >= 10, 60, "the mod hearing the answer")
        await scene.emu.set_voice_state(scene.guild.id, scene.mod.id, None)
        await scene.emu.wait_for(lambda: call.epoch > epoch + 1 and call.secured, 20, "the mod removed")
        assert player.busy
        packets = await heard(scene.emu, scene.guild.id)
        await record.wait_for(answered, 30)
    accepted = [c.user_id for c in call.commits if c.accepted]
    assert accepted == [bot.user.id] * 3  # alice's welcome, the mod's add, the mod's removal
    await assert_played_whole(packets, spy.spoken[0], voiced_engine.sample_rate, ffmpeg)
    (alice,) = [m for m in call.far_end if m.user_id == scene.alice.id]
    assert set(alice.heard[bot.user.id].outcomes) == {E2E}
    assert set(hearing.since_first_e2e) == {E2E}  # from its first decrypted frame on, it missed none


async def test_the_bot_moves_to_another_channel_and_speaks_there_end_to_end_encrypted(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, voiced_engine: SpeechServer, ffmpeg: str
) -> None:
    cellar = scene.guild.add_voice_channel("Cellar")
    lounge_call, cellar_call = scene.emu.call(scene.lounge.id), scene.emu.call(cellar.id)
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        await join(scene)
        await scene.emu.wait_for(lambda: lounge_call.secured and bot.user.id in lounge_call.members, 20, "the call")
        await scene.emu.set_voice_state(scene.guild.id, scene.mod.id, cellar.id)
        moved = await scene.command("join", user=scene.mod)
        await moved.wait_for(lambda r: r.edits, 30)
        assert moved.edits[-1].body["content"].startswith(f"🔊 Joined <#{cellar.id}>")
        voice = scene.emu.voice(scene.guild.id)
        await voice.wait_connected(2, 30)  # a new voice connection, to the cellar's call
        assert voice.connections[0].close_codes == [4014]  # Discord closed the lounge's
        await scene.emu.wait_for(lambda: cellar_call.secured and bot.user.id in cellar_call.members, 20, "moved")
        assert bot.user.id not in lounge_call.members
        assert bot.get_guild(scene.guild.id).voice_client.channel.id == cellar.id  # type: ignore[union-attr]

        start = len(voice.packets)
        record = await scene.ask("Is the cellar haunted?", user=scene.mod)
        packets = await heard(scene.emu, scene.guild.id, start)
        await record.wait_for(answered, 30)
    await assert_played_whole(packets, spy.spoken[0], voiced_engine.sample_rate, ffmpeg)
    (mod,) = cellar_call.far_end
    assert set(mod.heard[bot.user.id].since_first_e2e) == {E2E}
    (alice,) = lounge_call.far_end
    assert alice.heard.get(bot.user.id) is None or not alice.heard[bot.user.id].outcomes  # the lounge heard nothing
