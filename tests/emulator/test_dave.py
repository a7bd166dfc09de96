"""DAVE in the emulator: discord.py 2.7.1's own DAVE client against the gateway's MLS side, with far-end members
who can only hear the bot when the group really formed."""

from __future__ import annotations

import asyncio
import struct
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import discord
import imageio_ffmpeg
import numpy as np
import pytest

from tests.emulator import DiscordEmulator, GuildState
from tests.emulator.dave import E2E, PASSTHROUGH, PLAIN, UNDECRYPTABLE, DaveCall
from tests.emulator.mls import ExternalSender, Reader, split_commit_welcome, vector
from tests.emulator.test_emulator import Bot, _best_correlation

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def guild(emulator: DiscordEmulator) -> GuildState:
    guild = emulator.add_guild("Encrypted Guild")
    guild.add_voice_channel("Lounge")
    for name in ("alice", "bob", "carol"):
        guild.add_member(name)
    return guild


def _lounge(guild: GuildState) -> int:
    return next(c.id for c in guild.channels.values() if c.type == 2)


def _member(guild: GuildState, name: str) -> int:
    return next(m.id for m in guild.members.values() if m.user.name == name)


def _sine(path: Path, seconds: float) -> np.ndarray:
    t = np.arange(int(48000 * seconds)) / 48000
    samples = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return samples


@asynccontextmanager
async def _playing(voice_client: discord.VoiceClient, path: Path) -> AsyncIterator[asyncio.Event]:
    """Play a file; the event is set when playback ended."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    source = discord.FFmpegOpusAudio(str(path), executable=imageio_ffmpeg.get_ffmpeg_exe())
    voice_client.play(source, after=lambda error: loop.call_soon_threadsafe(done.set))
    yield done
    await asyncio.wait_for(done.wait(), 30)


async def _seat(emulator: DiscordEmulator, guild: GuildState, *names: str) -> list[int]:
    ids = [_member(guild, name) for name in names]
    for user_id in ids:
        await emulator.set_voice_state(guild.id, user_id, _lounge(guild))
    return ids


async def _secured(emulator: DiscordEmulator, call: DaveCall, *users: int) -> None:
    """Wait until a transition to a group holding ``users`` was executed."""
    await emulator.wait_for(lambda: call.secured and set(users) <= set(call.members), 20, f"a group of {users}")


def _audio(emulator: DiscordEmulator, guild: GuildState, start: int = 0) -> list:
    return [p for p in emulator.voice(guild.id).packets[start:] if not p.silence and not p.ogg_header]


# -- the MLS structures -------------------------------------------------------------------------------------
def test_vectors_use_the_variable_length_header() -> None:
    for size in (0, 63, 64, 16383, 16384):
        data = bytes(size)
        reader = Reader(vector(data) + b"rest")
        assert reader.vector() == data and reader.take(4) == b"rest" and reader.done


def test_a_commit_is_split_from_its_welcome_with_the_proposals_it_references() -> None:
    import davey

    sender, channel = ExternalSender(), 1234567890123
    alice, bob = davey.DaveSession(1, 1, channel), davey.DaveSession(1, 2, channel)
    for session in (alice, bob):
        session.set_external_sender(sender.package)
    add = sender.propose_add(channel, 0, bob.get_serialized_key_package())
    result = alice.process_proposals(davey.ProposalsOperationType.append, vector(add))
    assert result is not None and result.welcome is not None
    commit, welcome = split_commit_welcome(result.commit + result.welcome)
    assert (commit.message, welcome) == (result.commit, result.welcome)
    assert (commit.group_id, commit.epoch, commit.sender_leaf) == (channel, 0, 0)
    assert len(commit.proposal_refs) == 1
    assert split_commit_welcome(result.commit) == (commit, None)
    with pytest.raises(ValueError):
        split_commit_welcome(add)  # a proposal, not a commit
    alice.process_commit(commit.message)
    bob.process_welcome(welcome)
    frame = b"\xfc" + bytes(range(40))
    assert bob.decrypt(1, davey.MediaType.audio, alice.encrypt_opus(frame)) == frame
    assert alice.voice_privacy_code == bob.voice_privacy_code


# -- calls --------------------------------------------------------------------------------------------------
async def test_bot_joining_a_member_commits_and_the_member_hears_it_end_to_end(
    emulator: DiscordEmulator, guild: GuildState, tmp_path: Path
) -> None:
    reference = _sine(tmp_path / "sine.wav", 1.0)
    call = emulator.call(_lounge(guild))
    async with emulator.run_client(Bot(emulator)) as client:
        (alice,) = await _seat(emulator, guild, "alice")
        voice_client = await client.get_channel(_lounge(guild)).connect(timeout=10)
        await _secured(emulator, call, client.user.id, alice)
        async with _playing(voice_client, tmp_path / "sine.wav"):
            pass
        (utterance,) = await emulator.voice(guild.id).wait_for_utterances(1)
        code, far_end_code = voice_client.voice_privacy_code, call.privacy_code
        await voice_client.disconnect()
    record = emulator.voice(guild.id)
    assert record.connections[0].identify["max_dave_protocol_version"] == 1
    assert [c.user_id for c in call.commits if c.accepted] == [client.user.id]  # the bot committed, alice was welcomed
    audio = _audio(emulator, guild)
    assert audio and all(p.e2e == E2E and p.secured and p.frame.endswith(b"\xfa\xfa") for p in audio)
    assert _best_correlation((await utterance.decode()).mean(axis=1), reference) >= 0.9
    assert code is not None and code == far_end_code and len(code) == 30
    assert not call.far_end[0].errors


async def test_bot_joining_an_established_group_is_welcomed(
    emulator: DiscordEmulator, guild: GuildState, tmp_path: Path
) -> None:
    _sine(tmp_path / "sine.wav", 0.5)
    call = emulator.call(_lounge(guild))
    async with emulator.run_client(Bot(emulator)) as client:
        alice, bob = await _seat(emulator, guild, "alice", "bob")
        await _secured(emulator, call, alice, bob)  # the members formed their group before the bot came
        voice_client = await client.get_channel(_lounge(guild)).connect(timeout=10)
        await _secured(emulator, call, client.user.id, alice, bob)
        async with _playing(voice_client, tmp_path / "sine.wav"):
            pass
        await emulator.voice(guild.id).wait_for_utterances(1)
        committers = [c.user_id for c in call.commits if c.accepted]
        await voice_client.disconnect()
    assert len(committers) == 2 and client.user.id not in committers  # welcomed, not committing
    assert all(p.e2e == E2E for p in _audio(emulator, guild))
    members = {m.user_id: m for m in call.far_end}
    assert set(members[bob].heard[client.user.id].outcomes) == {E2E}  # every member hears it, not only the first
