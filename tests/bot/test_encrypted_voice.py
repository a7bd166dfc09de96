"""The bot's voice is end-to-end encrypted (DAVE): /privacy shows the call's code, and a connection that fails on
its encryption, or an installation without `davey`, ends /join with one sentence."""

from __future__ import annotations

import logging
from pathlib import Path

import davey
import discord
import discord.voice_client
import pytest

from bot.cogs.voice import privacy_code_groups
from tests.bot.helpers import Scene, ephemeral_reply, join, make_settings, running_bot

pytestmark = pytest.mark.timeout(90)


async def test_privacy_shows_the_code_the_members_clients_show(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:
        assert await ephemeral_reply(await scene.command("privacy")) == "I'm not in a voice channel."
        await join(scene)
        call = scene.emu.call(scene.lounge.id)
        await scene.emu.wait_for(lambda: call.secured and bot.user.id in call.members, 20, "the encrypted call")
        code = call.privacy_code  # what alice's own DAVE session shows
        reply = await ephemeral_reply(await scene.command("privacy"))
    assert code is not None and len(code) == 30
    assert reply == (
        f"🔒 My voice in <#{scene.lounge.id}> is end-to-end encrypted. Privacy code: "
        f"`{privacy_code_groups(code)}`; it matches the code your Discord client shows for the call."
    )
    assert privacy_code_groups("123456789012") == "12345 67890 12"


async def test_privacy_before_the_bot_is_in_the_encrypted_group(scene: Scene, tmp_path: Path) -> None:
    call = scene.emu.call(scene.lounge.id)
    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:
        for member in (scene.alice, scene.mod):
            await scene.emu.set_voice_state(scene.guild.id, member.id, scene.lounge.id)
        await scene.emu.wait_for(lambda: call.secured and len(call.members) == 2, 20, "the members' group")
        call.withheld_welcomes.add(bot.user.id)  # the bot is committed in, but never welcomed
        joined = await scene.command("join")
        await joined.wait_for(lambda r: r.edits, 30)
        await scene.emu.wait_for(lambda: bot.user.id in call.members, 20, "the commit adding the bot")
        reply = await ephemeral_reply(await scene.command("privacy"))
    assert reply == (
        f"My voice in <#{scene.lounge.id}> is not end-to-end encrypted yet: "
        "the encrypted call starts once someone else is in the channel; try again in a moment."
    )


async def test_a_4017_close_at_join_is_one_sentence_and_no_joining_state(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The client offers no DAVE version (as an installation whose voice library lacks it would): Discord closes
    # the voice connection with 4017.
    monkeypatch.setattr(discord.voice_state.VoiceConnectionState, "max_dave_protocol_version", property(lambda s: 0))
    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:
        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)
        with caplog.at_level(logging.WARNING, "bot.cogs.voice"):
            reply = await ephemeral_reply(await scene.command("join"))
        assert reply == (
            f"I couldn't connect to <#{scene.lounge.id}>: Discord requires end-to-end encrypted voice "
            "and setting up the encryption failed."
        )
        assert scene.emu.voice(scene.guild.id).refusals == [4017]  # no retries behind the member's back
        assert bot.get_guild(scene.guild.id).voice_client is None and bot.voice.player(scene.guild.id) is None
        assert any("close code 4017" in r.getMessage() for r in caplog.records)
        await scene.emu.wait_for(lambda: scene.guild.voice_states.get(scene.emu.bot.id) is None, 10, "the bot out")


async def test_without_davey_voice_is_disabled_at_start_up(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(discord.voice_client, "has_dave", False)
    sentence = (
        "Voice is disabled on this bot: Discord requires end-to-end encrypted voice (DAVE), "
        "and the `davey` package it needs is not installed."
    )
    with caplog.at_level(logging.WARNING, "bot.cogs.voice"):
        async with running_bot(scene.emu, make_settings(tmp_path)):
            assert sentence in [r.getMessage() for r in caplog.records]  # said once, at start-up
            await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)
            assert await ephemeral_reply(await scene.command("join")) == sentence
    assert not scene.emu.voice_requests


async def test_a_dave_session_failure_at_join_is_one_sentence(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSession:
        def __init__(self, *args: object) -> None:
            raise ValueError("Failed to create the session")

    async with running_bot(scene.emu, make_settings(tmp_path)) as bot:
        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)  # alice's session is made
        monkeypatch.setattr(davey, "DaveSession", BrokenSession)  # the bot's is not
        with caplog.at_level(logging.WARNING, "bot.cogs.voice"):
            reply = await ephemeral_reply(await scene.command("join"))
        assert reply.startswith(f"I couldn't connect to <#{scene.lounge.id}>: Discord requires end-to-end encrypted")
        assert bot.get_guild(scene.guild.id).voice_client is None and bot.voice.player(scene.guild.id) is None
    assert [r.getMessage() for r in caplog.records if "end-to-end" in r.getMessage()] == [
        f"Joining {scene.lounge.id} failed on end-to-end encryption: Failed to create the session"
    ]
