"""/join, /leave, /stop and spoken answers through the emulator's real voice server."""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path

import discord
import pytest

from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import Scene, answered, ephemeral_reply, fields, final_embed, join, make_settings, running_bot
from tests.emulator import GuildState
from tests.emulator.records import InteractionRecord

pytestmark = pytest.mark.timeout(120)


async def test_join_explains_what_is_missing(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)):
        assert await ephemeral_reply(await scene.command("join")) == "Join a voice channel first, then use /join."
        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)
        for denied, expected in (("connect", "Connect and Speak permissions"), ("speak", "Speak permission")):
            scene.guild.set_overwrite(scene.lounge, scene.guild.bot_role, deny=discord.Permissions(**{denied: True}))
            reply = await ephemeral_reply(await scene.command("join"))
            assert reply == f"I can't speak in <#{scene.lounge.id}>: I need the {expected} there."
        scene.guild.set_overwrite(scene.lounge, scene.guild.bot_role)
        scene.lounge.user_limit = 1
        scene.guild.set_overwrite(scene.lounge, scene.guild.bot_role)  # re-announces the channel
        reply = await ephemeral_reply(await scene.command("join"))
        assert reply == f"<#{scene.lounge.id}> is full, so I can't join it."
        assert not scene.emu.voice_requests


def progress(record: InteractionRecord) -> list[str | None]:
    """The progress lines the interaction's response showed."""
    return [e.body.get("content") for e in record.edits]


def waited_out_leaves(caplog: pytest.LogCaptureFixture) -> list[str]:
    """discord.py's log lines for leaves whose confirmation from Discord it never read (it waited its timeout)."""
    return [m for m in caplog.messages if "disconnection confirmation" in m]


async def in_a_second_guild(scene: Scene) -> GuildState:
    """Another guild, where bob sits in its Lounge and has the bot join him there."""
    other = scene.emu.add_guild("Second")
    lounge, general, bob = other.add_voice_channel("Lounge"), other.add_text_channel("general"), other.add_member("bob")
    await scene.emu.set_voice_state(other.id, bob.id, lounge.id)
    await (await scene.emu.slash_command(other.id, general.id, bob.id, "join")).wait_for(lambda r: r.edits, 30)
    await scene.emu.voice(other.id).wait_connected(1, 30)
    return other


def waiting(record: InteractionRecord) -> bool:
    """Whether the response now says the answer waits in the voice queue."""
    return bool(record.edits) and "Waiting" in (progress(record)[-1] or "")


async def test_answers_are_spoken_in_turn_in_the_voice_channel(scene: Scene, tmp_path: Path) -> None:
    hold = threading.Event()  # the first answer stays in the player until the second has queued behind it
    engine = SineEngine(seconds_per_char=0.03, hold=hold)
    async with running_bot(scene.emu, make_settings(tmp_path), tts=engine):
        await join(scene)
        first = await scene.ask("First?")
        await until(lambda: "🗣️ Speaking…" in progress(first), 60)
        second = await scene.ask("Second?", user=scene.mod)
        await until(lambda: "⏳ Waiting to speak (1 ahead)…" in progress(second), 60)
        hold.set()
        await first.wait_for(answered, 60)
        await second.wait_for(answered, 60)
        utterances = await scene.emu.voice(scene.guild.id).wait_for_utterances(2, 60)

        assert utterances[1].started_at >= utterances[0].ended_at  # never talking over itself
        for record, utterance in zip((first, second), utterances, strict=True):
            assert "footer" not in final_embed(record)
            words = fields(final_embed(record))["🎱 The ball says"]
            assert utterance.duration >= len(words) * engine.seconds_per_char * 0.8
        assert not scene.bot_messages()  # spoken, so no voice messages


async def test_stop_cancels_the_answer_and_clears_the_queue(scene: Scene, tmp_path: Path) -> None:
    hold = threading.Event()  # the first answer stays in the player until the test has stopped it
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine(hold=hold)) as bot:
        assert await ephemeral_reply(await scene.command("stop")) == "Nothing is being spoken right now."
        await join(scene)
        speaking = await scene.ask("Long one?")
        await until(lambda: "🗣️ Speaking…" in progress(speaking), 60)  # the player holds it
        waiting = await scene.ask("Next?", user=scene.mod)
        player = bot.voice.player(scene.guild.id)
        assert player is not None
        await until(lambda: player.pending == 1, 30)  # the second answer waits in the queue
        stop = await scene.command("stop")
        assert (await stop.wait_for_response()).data["content"] == "⏹️ Stopped 2 answers."
        hold.set()
        for record in (speaking, waiting):
            await record.wait_for(lambda r: answered(r) and "footer" in final_embed(r), 30)
            assert final_embed(record)["footer"]["text"] == "🔇 Speech was stopped before this answer was finished."


async def test_leave_and_auto_leave(scene: Scene, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, voice_idle_seconds=0.5)
    async with running_bot(scene.emu, settings, tts=SineEngine()) as bot:
        assert await ephemeral_reply(await scene.command("leave")) == "I'm not in a voice channel."
        await join(scene)
        leave = await scene.command("leave")
        await leave.wait_for(lambda r: r.edits, 30)
        assert leave.edits[-1].body["content"] == f"👋 Left <#{scene.lounge.id}>."
        await until(lambda: bot.get_guild(scene.guild.id).voice_client is None)

        await join(scene)  # idle for voice_idle_seconds: leaves by itself
        await until(lambda: bot.get_guild(scene.guild.id).voice_client is None)
        assert scene.emu.voice_requests[-1].channel_id is None


async def test_leaves_when_the_channel_empties(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()) as bot:
        await join(scene)
        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, None)
        await until(lambda: bot.get_guild(scene.guild.id).voice_client is None)
        assert scene.emu.voice_requests[-1].channel_id is None


async def test_closing_leaves_voice_with_discords_confirmation(
    scene: Scene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="discord.voice_state")
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine(seconds_per_char=0.5)) as bot:
        await join(scene)
        await (await scene.ask("Will you go quietly?")).wait_for(answered, 60)
    assert scene.emu.voice_requests[-1].channel_id is None
    assert bot.user.id not in scene.guild.voice_states
    assert not waited_out_leaves(caplog)  # discord.py read Discord's VOICE_STATE_UPDATE instead of waiting


async def test_a_failed_leave_at_close_is_logged_and_the_others_still_leave(
    scene: Scene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="discord.voice_state")
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()) as bot:
        await join(scene)
        other = await in_a_second_guild(scene)
        failing = bot.get_guild(scene.guild.id).voice_client
        leave = failing.disconnect

        async def leaves_then_fails(*, force: bool = False) -> None:
            await leave(force=force)
            raise RuntimeError("the leave went wrong")

        failing.disconnect = leaves_then_fails  # type: ignore[method-assign]
    assert "Leaving voice failed: RuntimeError('the leave went wrong')" in caplog.messages
    assert [r.channel_id for r in scene.emu.voice_requests if r.guild_id == other.id][-1] is None
    assert not waited_out_leaves(caplog)


async def test_full_queue_is_refused_with_a_clear_message(scene: Scene, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, guild_queue_size=1)
    hold = threading.Event()  # the first answer stays in the player until the test has stopped it
    async with running_bot(scene.emu, settings, tts=SineEngine(hold=hold)):
        await join(scene)
        speaking = await scene.ask("Long one?")
        await until(lambda: "🗣️ Speaking…" in progress(speaking), 60)
        queued = await scene.ask("Next?")
        await queued.wait_for(waiting, 30)
        refusal = await ephemeral_reply(await scene.ask("And me?", user=scene.mod))
        assert re.fullmatch(
            r"1 answer is already waiting to be spoken here; ask again in about \d+ seconds?\.", refusal
        )
        assert (await (await scene.command("stop")).wait_for_response()).data["content"] == "⏹️ Stopped 2 answers."
        hold.set()
        await queued.wait_for(lambda r: answered(r) and "footer" in final_embed(r), 30)


async def test_voice_drop_mid_answer_reconnects_and_the_queue_resumes(scene: Scene, tmp_path: Path) -> None:
    hold = threading.Event()  # the first answer stays mid-speech until the voice connection is back
    tts = SineEngine(seconds_per_char=0.15, hold=hold, hold_after=1)
    async with running_bot(scene.emu, make_settings(tmp_path), tts=tts) as bot:
        await join(scene)
        voice = scene.emu.voice(scene.guild.id)
        record = await scene.ask("Before?")
        await record.wait_for(answered, 60)
        queued = await scene.ask("Queued?", user=scene.mod)
        await queued.wait_for(waiting, 30)
        # an RTCP report wakes discord.py's UDP reader, which otherwise sits in select() during the reconnect
        await scene.emu.wait_for(lambda: voice.connections[0].reports_sent >= 1, 30)
        await scene.emu.close_voice(scene.guild.id, 4006)  # the voice session is gone mid-answer
        await voice.wait_connected(2, 60)
        hold.set()
        await queued.wait_for(answered, 60)
        await scene.emu.wait_for(lambda: any(p.ssrc == voice.connections[1].ssrc for p in voice.packets), 60)
        player = bot.voice.player(scene.guild.id)
        assert player is not None
        await until(lambda: not player.busy, 60)
    answers = [fields(final_embed(r))["🎱 The ball says"] for r in (record, queued)]
    assert [text for text, _ in tts.spoken] == answers  # the interrupted answer went on, then the queued one
    assert [final_embed(r).get("footer") for r in (record, queued)] == [None, None]  # neither fell back to text


async def test_a_move_that_does_not_complete_is_reported(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cellar = scene.guild.add_voice_channel("Cellar")
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()):
        monkeypatch.setattr(sys.modules["bot.cogs.voice"], "CONNECT_TIMEOUT", 2.0)  # the module the bot loaded
        await join(scene)
        scene.emu.udp_blackhole(scene.guild.id)  # the new connection's IP discovery is never answered
        await scene.emu.set_voice_state(scene.guild.id, scene.mod.id, cellar.id)
        moved = await ephemeral_reply(await scene.command("join", user=scene.mod))
        assert moved == f"I couldn't connect to <#{cellar.id}>; please try again."
        scene.emu.udp_blackhole(scene.guild.id, enabled=False)


async def test_kicked_from_voice_answers_go_out_as_voice_messages(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()) as bot:
        await join(scene)
        await scene.emu.set_voice_state(scene.guild.id, scene.emu.bot.id, None)  # a moderator disconnects it
        await until(lambda: bot.get_guild(scene.guild.id).voice_client is None, 30)
        record = await scene.ask("Where did you go?")
        await record.wait_for(answered, 60)
        await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)


async def test_only_listeners_or_moderators_control_the_voice(scene: Scene, tmp_path: Path) -> None:
    stranger = scene.guild.add_member("stranger")
    elsewhere = scene.guild.add_voice_channel("Elsewhere")
    movers = scene.guild.add_role("Movers", discord.Permissions(move_members=True))
    mover = scene.guild.add_member("mover", roles=[movers])
    hold = threading.Event()  # the answer stays in the player, mid-speech, until the test has stopped it
    tts = SineEngine(seconds_per_char=0.5, hold=hold, hold_after=1)
    async with running_bot(scene.emu, make_settings(tmp_path), tts=tts) as bot:
        await join(scene)
        speaking = await scene.ask("Long one?")
        await speaking.wait_for(answered, 60)
        refusal = f"Only members in <#{scene.lounge.id}>, or with the Move Members permission, can do that."
        assert await ephemeral_reply(await scene.command("stop", user=stranger)) == refusal
        assert await ephemeral_reply(await scene.command("leave", user=stranger)) == refusal
        await scene.emu.set_voice_state(scene.guild.id, stranger.id, elsewhere.id)
        moved = await ephemeral_reply(await scene.command("join", user=stranger))
        assert moved == f"I'm speaking elsewhere right now. {refusal}"
        player = bot.voice.player(scene.guild.id)
        assert player is not None and player.busy  # still speaking, still in the Lounge
        assert bot.get_guild(scene.guild.id).voice_client.channel.id == scene.lounge.id

        stop = await scene.command("stop", user=mover)  # Move Members, not in voice
        assert (await stop.wait_for_response()).data["content"] == "⏹️ Stopped 1 answer."
        hold.set()
        leave = await scene.command("leave")  # alice sits in the Lounge
        await leave.wait_for(lambda r: r.edits, 30)
        assert leave.edits[-1].body["content"] == f"👋 Left <#{scene.lounge.id}>."


async def test_a_failed_rejoin_does_not_stop_the_other_guilds(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()) as bot:
        await join(scene)
        other = await in_a_second_guild(scene)

        cog = bot.get_cog("Voice")
        join_channel = cog.join
        failed: list[int] = []

        async def first_fails(channel: discord.VoiceChannel) -> None:
            if not failed:
                failed.append(channel.guild.id)
                raise discord.HTTPException(FakeResponse(500), "Internal Server Error")
            await join_channel(channel)

        cog.join = first_fails
        for guild in bot.guilds:  # the voice sessions ended with the gateway session
            if guild.voice_client is not None:
                await guild.voice_client.disconnect(force=True)
        await cog.on_shard_ready(0)
        (failed_guild,) = failed
        rejoined = other.id if failed_guild == scene.guild.id else scene.guild.id
        await until(lambda: bot.get_guild(rejoined).voice_client is not None, 30)
        assert cog.player(rejoined) is not None and cog.player(failed_guild) is None


class FakeResponse:
    """What `discord.HTTPException` reads from an aiohttp response."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Internal Server Error"
