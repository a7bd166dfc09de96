"""DAVE in the emulator: discord.py 2.7.1's own DAVE client against the gateway's MLS side, with far-end members
who can only hear the bot when the group really formed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import discord
import imageio_ffmpeg
import numpy as np
import pytest

from tests.emulator import DiscordEmulator, GuildState, RtpPacket
from tests.emulator.dave import E2E, PASSTHROUGH, PLAIN, UNDECRYPTABLE, DaveCall, Hearing
from tests.emulator.mls import ExternalSender, Reader, split_commit_welcome, vector
from tests.emulator.speaker import opus_frames
from tests.emulator.test_emulator import Bot, _best_correlation, _write_sine

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


@asynccontextmanager
async def _in_call(
    emulator: DiscordEmulator, guild: GuildState, *names: str
) -> AsyncIterator[tuple[discord.Client, discord.VoiceClient, list[int]]]:
    """The client in the Lounge, where the named members sat down first, once it is in their encrypted group."""
    async with emulator.run_client(Bot(emulator)) as client:
        members = await _seat(emulator, guild, *names)
        voice_client = await client.get_channel(_lounge(guild)).connect(timeout=10)
        await _secured(emulator, emulator.call(_lounge(guild)), client.user.id, *members)
        yield client, voice_client, members
        await voice_client.disconnect()


class _Tone(discord.AudioSource):
    """A 440 Hz tone as Opus frames (one second of them, repeated) until `stop` is set."""

    FRAMES = opus_frames(0.3 * np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000).astype(np.float32))

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.played = 0

    def read(self) -> bytes:
        if self.stop.is_set():
            return b""
        self.played += 1
        return self.FRAMES[(self.played - 1) % len(self.FRAMES)]

    def is_opus(self) -> bool:
        return True


@asynccontextmanager
async def _speaking(
    emulator: DiscordEmulator, guild: GuildState, *names: str
) -> AsyncIterator[tuple[discord.Client, list[int], asyncio.Event]]:
    """`_in_call` with the named members, playing a tone until the block ends; the event is set when playback
    ended (before that: it stopped by itself)."""
    stop, done = threading.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    async with _in_call(emulator, guild, *names) as (client, voice_client, members):
        voice_client.play(_Tone(stop), after=lambda error: loop.call_soon_threadsafe(done.set))
        try:
            yield client, members, done
        finally:
            stop.set()
            await asyncio.wait_for(done.wait(), 30)


def _audio(emulator: DiscordEmulator, guild: GuildState, start: int = 0, stop: int | None = None) -> list[RtpPacket]:
    """The audio packets (no silence, no Ogg headers) among the guild's packets[start:stop]."""
    return [p for p in emulator.voice(guild.id).packets[start:stop] if not p.silence and not p.ogg_header]


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
    reference = _write_sine(tmp_path / "sine.wav", 1.0)
    call = emulator.call(_lounge(guild))
    async with _in_call(emulator, guild, "alice") as (client, voice_client, _):
        async with _playing(voice_client, tmp_path / "sine.wav"):
            pass
        (utterance,) = await emulator.voice(guild.id).wait_for_utterances(1)
        code, far_end_code = voice_client.voice_privacy_code, call.privacy_code
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
    _write_sine(tmp_path / "sine.wav", 0.5)
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


async def _hear_more(emulator: DiscordEmulator, guild: GuildState, count: int) -> int:
    """Wait for ``count`` more audio packets; return the index of the first packet after those heard before."""
    mark = len(emulator.voice(guild.id).packets)
    await emulator.wait_for(lambda: len(_audio(emulator, guild, mark)) >= count, 30, f"{count} audio packets")
    return mark


async def test_a_member_joining_while_the_bot_speaks_is_committed_in_and_hears_it(
    emulator: DiscordEmulator, guild: GuildState
) -> None:
    call = emulator.call(_lounge(guild))
    async with _speaking(emulator, guild, "alice") as (client, (alice,), done):
        await _hear_more(emulator, guild, 25)
        (bob,) = await _seat(emulator, guild, "bob")
        await _secured(emulator, call, client.user.id, alice, bob)
        listener = {m.user_id: m for m in call.far_end}[bob]
        hearing = listener.heard.setdefault(client.user.id, Hearing())
        await emulator.wait_for(lambda: len(hearing.since_first_e2e) >= 25, 30, "bob to hear 25 frames")
        assert not done.is_set()  # the bot was still speaking
    assert [c.user_id for c in call.commits if c.accepted][:2] == [client.user.id] * 2  # bob's add too
    assert all(p.e2e == E2E for p in _audio(emulator, guild))  # alice heard all of it through the change
    assert set(hearing.since_first_e2e) == {E2E}


async def test_a_member_leaving_is_removed_and_the_others_keep_hearing(
    emulator: DiscordEmulator, guild: GuildState
) -> None:
    call = emulator.call(_lounge(guild))
    async with _speaking(emulator, guild, "alice", "bob") as (client, (_, bob), done):
        epoch = call.epoch
        await _hear_more(emulator, guild, 25)
        await emulator.set_voice_state(guild.id, bob, None)
        await emulator.wait_for(lambda: call.epoch > epoch and call.secured, 20, "bob's removal")
        assert not done.is_set()
    assert call.commits[-1].user_id == client.user.id  # the bot committed the removal
    assert bob not in call.participants
    assert all(p.e2e == E2E for p in _audio(emulator, guild))


async def test_a_bad_commit_is_reported_and_the_bot_rejoins_the_group(
    emulator: DiscordEmulator, guild: GuildState
) -> None:
    call = emulator.call(_lounge(guild))
    async with _speaking(emulator, guild, "alice") as (client, (alice,), done):
        await _hear_more(emulator, guild, 25)
        transition = call.send_bad_commit(client.user.id)
        await emulator.wait_for(lambda: (client.user.id, transition) in call.invalid_reports, 20, "op 31")
        await emulator.wait_for(lambda: call.epoch >= 3, 20, "the bot's removal and return")
        await _secured(emulator, call, client.user.id, alice)
        recovered = await _hear_more(emulator, guild, 25)
        assert not done.is_set()
    committers = [c.user_id for c in call.commits if c.accepted]
    assert committers[0] == client.user.id and committers[1:3] == [alice, alice]  # removal, then the re-add
    assert all(p.e2e == E2E for p in _audio(emulator, guild, recovered))


async def test_a_downgrade_to_transport_encryption_and_back(emulator: DiscordEmulator, guild: GuildState) -> None:
    call = emulator.call(_lounge(guild))
    async with _speaking(emulator, guild, "alice") as (client, (alice,), done):
        await _hear_more(emulator, guild, 20)
        transition = call.downgrade()
        await emulator.wait_for(lambda: (transition, 0) in call.executed, 20, "the downgrade")
        await _hear_more(emulator, guild, 5)  # frames encrypted before the bot executed it may still arrive
        downgraded = await _hear_more(emulator, guild, 20)
        upgrading = len(emulator.voice(guild.id).packets)
        call.upgrade()
        await _secured(emulator, call, client.user.id, alice)
        upgraded = await _hear_more(emulator, guild, 20)
        assert not done.is_set()
    plain = _audio(emulator, guild, downgraded, upgrading)
    assert len(plain) >= 20 and all(p.e2e == PASSTHROUGH and not p.frame.endswith(b"\xfa\xfa") for p in plain)
    assert all(p.e2e == E2E for p in _audio(emulator, guild, upgraded))


async def test_the_far_end_hears_nothing_when_the_bot_is_never_welcomed(
    emulator: DiscordEmulator, guild: GuildState, tmp_path: Path
) -> None:
    _write_sine(tmp_path / "sine.wav", 1.0)
    call = emulator.call(_lounge(guild))
    async with emulator.run_client(Bot(emulator)) as client:
        alice, bob = await _seat(emulator, guild, "alice", "bob")
        await _secured(emulator, call, alice, bob)
        call.withheld_welcomes.add(client.user.id)
        voice_client = await client.get_channel(_lounge(guild)).connect(timeout=10)
        await emulator.wait_for(lambda: client.user.id in call.members, 20, "the commit adding the bot")
        async with _playing(voice_client, tmp_path / "sine.wav"):
            pass
        await emulator.voice(guild.id).wait_for_utterances(1)
        await voice_client.disconnect()
    audio = _audio(emulator, guild)
    assert len(audio) >= 40 and all(p.e2e == UNDECRYPTABLE for p in audio)
    for member in call.far_end:
        assert set(member.heard[client.user.id].outcomes) == {UNDECRYPTABLE}


async def test_version_0_is_transport_encryption_only(tmp_path: Path) -> None:
    _write_sine(tmp_path / "sine.wav", 0.5)
    async with DiscordEmulator(dave=False) as emulator:
        guild = emulator.add_guild("Plain Guild")
        lounge = guild.add_voice_channel("Lounge")
        alice = guild.add_member("alice")
        with emulator.patch():
            async with emulator.run_client(Bot(emulator)) as client:
                await emulator.set_voice_state(guild.id, alice.id, lounge.id)
                voice_client = await client.get_channel(lounge.id).connect(timeout=10)
                async with _playing(voice_client, tmp_path / "sine.wav"):
                    pass
                await emulator.voice(guild.id).wait_for_utterances(1)
                code = voice_client.voice_privacy_code
                await voice_client.disconnect()
    assert code is None
    audio = _audio(emulator, guild)
    assert audio and all(p.e2e == PLAIN and p.payload == p.frame for p in audio)
    assert emulator.call(lounge.id).commits == [] and emulator.call(lounge.id).protocol_version == 0


async def test_a_client_without_dave_is_closed_with_4017(
    emulator: DiscordEmulator, guild: GuildState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord.voice_state.VoiceConnectionState, "max_dave_protocol_version", property(lambda s: 0))
    async with emulator.run_client(Bot(emulator)) as client:
        with pytest.raises(discord.errors.ConnectionClosed):
            await client.get_channel(_lounge(guild)).connect(timeout=10, reconnect=False)
    assert emulator.voice(guild.id).refusals == [4017] and not emulator.voice(guild.id).connections
