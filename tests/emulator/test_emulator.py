"""Self-tests: the real discord.py client against the emulator."""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import Callable
from pathlib import Path

import discord
import imageio_ffmpeg
import numpy as np
import pytest
from discord import app_commands
from discord.ext import commands

from tests.emulator import DiscordEmulator, GuildState

pytestmark = pytest.mark.timeout(30)

OGG_BYTES = b"OggS" + bytes(range(60))


class Bot(commands.Bot):
    """A small bot with the command shapes the real bot uses, syncing globally in setup_hook."""

    def __init__(self, emu: DiscordEmulator, intents: discord.Intents | None = None) -> None:
        super().__init__(command_prefix="!", intents=intents or discord.Intents.default(), **emu.client_options())
        self.seen: list[discord.Message] = []
        voice = app_commands.Group(name="voice", description="Voice settings")

        @voice.command(name="set", description="Pick a voice")
        async def voice_set(interaction: discord.Interaction, preset: str) -> None:
            await interaction.response.send_message(f"voice={preset}", ephemeral=True)

        @app_commands.command(name="ask", description="Ask the 8 ball")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await interaction.response.defer(thinking=True)
            await asyncio.sleep(0.05)
            answer = discord.File(io.BytesIO(OGG_BYTES), "answer.ogg")
            await interaction.edit_original_response(content=f"answer: {question}", attachments=[answer])
            await interaction.followup.send("more", ephemeral=True)

        @ask.autocomplete("question")
        async def ask_complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=q, value=q) for q in ("will it rain?", "will I win?") if current in q]

        @app_commands.command(name="echo", description="Echo an attachment")
        async def echo(interaction: discord.Interaction, audio: discord.Attachment) -> None:
            data = await audio.read()
            await interaction.response.send_message(file=discord.File(io.BytesIO(data), "echo.ogg"))

        @app_commands.context_menu(name="Ask the Magic 8 Ball")
        async def ask_message(interaction: discord.Interaction, message: discord.Message) -> None:
            sizes = [len(await a.read()) for a in message.attachments]
            await interaction.response.send_message(f"{message.content}|{sizes}", ephemeral=True)

        for command in (voice, ask, echo, ask_message):
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s before re-identifying; tests don't need the courtesy."""

    async def on_message(self, message: discord.Message) -> None:
        if message.author != self.user:
            self.seen.append(message)


@pytest.fixture
def guild(emulator: DiscordEmulator) -> GuildState:
    guild = emulator.add_guild("Magic Guild")
    guild.add_text_channel("general")
    guild.add_voice_channel("Lounge")
    guild.add_member("alice")
    return guild


def _channel(guild: GuildState, kind: int) -> int:
    return next(c.id for c in guild.channels.values() if c.type == kind)


def _alice(guild: GuildState) -> int:
    return next(m.id for m in guild.members.values() if m.user.name == "alice")


async def _until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll client-side state (the emulator cannot see inside the client)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "client-side condition not met in time"
        await asyncio.sleep(0.01)


async def test_login_ready_and_guild_create_fill_the_cache(emulator: DiscordEmulator, guild: GuildState) -> None:
    voice_id = _channel(guild, 2)
    guild.set_overwrite(guild.channels[voice_id], guild.bot_role, deny=discord.Permissions(connect=True))
    mod = guild.add_role("Mods", discord.Permissions(manage_guild=True))
    guild.add_member("bob", roles=[mod])
    intents = discord.Intents.default()
    intents.members = True
    async with emulator.run_client(Bot(emulator, intents)) as client:
        assert client.user is not None and client.user.id == emulator.bot.id
        assert client.application_id == emulator.world.application_id
        cached = client.get_guild(guild.id)
        assert cached is not None and cached.name == "Magic Guild"
        assert {c.name for c in cached.channels} == {"general", "Lounge"}
        assert {m.name for m in cached.members} >= {"alice", "bob", emulator.bot.name}
        lounge = cached.get_channel(voice_id)
        assert not lounge.permissions_for(cached.me).connect
        assert cached.get_channel(_channel(guild, 0)).permissions_for(cached.me).send_messages
        bob = next(m for m in cached.members if m.name == "bob")
        assert (
            bob.guild_permissions.manage_guild and not cached.get_member(_alice(guild)).guild_permissions.manage_guild
        )

        later = emulator.add_guild("Later Guild")
        later.add_text_channel("late-general")
        await _until(lambda: client.get_guild(later.id) is not None)
        assert [c.name for c in client.get_guild(later.id).channels] == ["late-general"]
        channel_id = next(iter(later.channels))
        await emulator.remove_bot_from_guild(later.id)
        await _until(lambda: client.get_guild(later.id) is None)
        assert emulator.gateway.identifies == 1
        with pytest.raises(discord.Forbidden) as refused:
            await client.http.send_message(channel_id, params=discord.http.handle_message_parameters("hello?"))
        assert refused.value.code == 50001


async def test_wrong_token_is_refused(emulator: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.default(), **emulator.client_options())
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()
    assert emulator.requests[-1].status == 401


async def test_slash_command_sync_defer_and_followup(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    async with emulator.run_client(Bot(emulator)):
        assert {c["name"] for c in emulator.commands()} == {"voice", "ask", "echo", "Ask the Magic 8 Ball"}
        rec = await emulator.slash_command(guild.id, text_id, _alice(guild), "ask", {"question": "rain?"})
        await rec.wait_for(lambda r: r.followups)
        assert rec.deferred and not rec.ephemeral
        assert rec.callback is not None and rec.dispatched_at is not None
        assert rec.dispatched_at <= rec.callback.at <= rec.edits[0].at <= rec.followups[0].at
        (edit,) = rec.edits
        assert edit.attachments[0].data == OGG_BYTES and edit.body["content"] == "answer: rain?"
        assert rec.original is not None and not rec.original.flags & (1 << 7)  # no longer "thinking"
        assert [(m.content, m.ephemeral) for m in rec.messages] == [("answer: rain?", False), ("more", True)]
        assert rec.original in emulator.channel_messages(text_id)

        sub = await emulator.slash_command(guild.id, text_id, _alice(guild), "voice set", {"preset": "jenny"})
        event = await sub.wait_for_response()
        assert event.type == 4 and sub.ephemeral and event.data["content"] == "voice=jenny"


async def test_autocomplete_returns_choices(emulator: DiscordEmulator, guild: GuildState) -> None:
    async with emulator.run_client(Bot(emulator)):
        rec = await emulator.autocomplete(
            guild.id, _channel(guild, 0), _alice(guild), "ask", {"question": "rain"}, focused="question"
        )
        await rec.wait_for_response()
        assert rec.choices == [{"name": "will it rain?", "value": "will it rain?"}]


async def test_late_and_double_callbacks_are_rejected(emulator: DiscordEmulator, guild: GuildState) -> None:
    failures: list[BaseException] = []
    client = Bot(emulator)

    @client.tree.command(name="slow", description="Answers too late, then twice")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as error:
            failures.append(error)

    @client.tree.command(name="twice", description="Answers twice")
    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("once")
        try:  # bypass discord.py's own "already responded" guard to reach the API
            await discord.webhook.async_.async_context.get().create_interaction_response(
                interaction.id,
                interaction.token,
                session=interaction._session,
                params=discord.webhook.async_.interaction_response_params(4, {"content": "twice"}),
            )
        except discord.HTTPException as error:
            failures.append(error)

    async with emulator.run_client(client):
        emulator.interaction_deadline = 0.1
        late = await emulator.slash_command(guild.id, _channel(guild, 0), _alice(guild), "slow")
        await _until(lambda: failures)
        emulator.interaction_deadline = 3.0
        double = await emulator.slash_command(guild.id, _channel(guild, 0), _alice(guild), "twice")
        await _until(lambda: len(failures) == 2)
    assert late.callback is None and [(e.kind, e.status) for e in late.events] == [("callback", 404)]
    assert [(e.kind, e.status) for e in double.events] == [("callback", 200), ("callback", 400)]
    assert [(type(f), f.code) for f in failures] == [(discord.NotFound, 10062), (discord.HTTPException, 40060)]


async def test_attachment_option_and_message_command(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    intents = discord.Intents.default()
    intents.message_content = True
    async with emulator.run_client(Bot(emulator, intents)) as client:
        rec = await emulator.slash_command(
            guild.id, text_id, _alice(guild), "echo", {"audio": ("q.ogg", OGG_BYTES, "audio/ogg")}
        )
        await rec.wait_for_response()
        (sent,) = rec.callback.attachments
        assert sent.data == OGG_BYTES and sent.filename == "echo.ogg"
        assert sent.part_content_type == "application/octet-stream"  # discord.py's File parts

        posted = await emulator.post_message(text_id, _alice(guild), "hello", [("a.bin", b"12345", "text/plain")])
        await _until(lambda: client.seen)
        assert client.seen[0].content == "hello" and client.seen[0].attachments[0].size == 5
        menu = await emulator.message_command(guild.id, text_id, _alice(guild), "Ask the Magic 8 Ball", posted)
        event = await menu.wait_for_response()
        assert event.data["content"] == "hello|[5]" and menu.ephemeral


async def test_voice_message_is_dispatched_with_its_metadata(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    intents = discord.Intents.default()
    intents.message_content = True
    async with emulator.run_client(Bot(emulator, intents)) as client:
        await emulator.post_message(
            text_id,
            _alice(guild),
            attachments=[("voice-message.ogg", OGG_BYTES, "audio/ogg")],
            voice=True,
            duration_secs=2.5,
        )
        await _until(lambda: client.seen)
        message = client.seen[0]
        assert message.flags.voice and message.attachments[0].duration == 2.5
        assert message.attachments[0].waveform is not None
        assert await message.attachments[0].read() == OGG_BYTES


async def test_message_content_intent_hides_attachments(emulator: DiscordEmulator, guild: GuildState) -> None:
    async with emulator.run_client(Bot(emulator)) as client:
        await emulator.post_message(_channel(guild, 0), _alice(guild), "secret", [("a.ogg", OGG_BYTES, "audio/ogg")])
        await _until(lambda: client.seen)
        assert client.seen[0].content == "" and client.seen[0].attachments == []


async def test_channel_message_with_file_round_trips(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    async with emulator.run_client(Bot(emulator)) as client:
        channel = client.get_channel(text_id)
        sent = await channel.send("here", file=discord.File(io.BytesIO(OGG_BYTES), "answer.ogg"))
        stored = await emulator.wait_for_message(text_id)
        assert stored.content == "here" and stored.attachments[0].data == OGG_BYTES
        fetched = await channel.fetch_message(sent.id)
        assert await fetched.attachments[0].read() == OGG_BYTES


async def test_voice_message_upload_flow_and_rules(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    route = discord.http.Route
    async with emulator.run_client(Bot(emulator)) as client:
        http = client.http
        slots = await http.request(
            route("POST", "/channels/{channel_id}/attachments", channel_id=text_id),
            json={"files": [{"id": "0", "filename": "voice-message.ogg", "file_size": len(OGG_BYTES)}]},
        )
        slot = slots["attachments"][0]
        session = http._HTTPClient__session  # the client's own session and connector
        async with session.put(slot["upload_url"], data=OGG_BYTES, headers={"Content-Type": "audio/ogg"}) as put:
            assert put.status == 200
        voice_fields = {"duration_secs": 1.0, "waveform": "AAAA"}
        attachment = {"id": "0", "filename": "voice-message.ogg", "uploaded_filename": slot["upload_filename"]}
        await http.request(
            route("POST", "/channels/{channel_id}/messages", channel_id=text_id),
            json={"flags": 8192, "attachments": [{**attachment, **voice_fields}]},
        )
        uploaded = await emulator.wait_for_message(text_id)
        assert uploaded.voice and uploaded.attachments[0].data == OGG_BYTES
        assert uploaded.attachments[0].duration_secs == 1.0

        def multipart(content_type: str, **payload: object) -> list[dict[str, object]]:
            body = {"flags": 8192, "attachments": [{"id": 0, "filename": "v.ogg", **voice_fields}], **payload}
            part = {"name": "files[0]", "value": OGG_BYTES, "filename": "v.ogg", "content_type": content_type}
            return [{"name": "payload_json", "value": json.dumps(body)}, part]

        messages = route("POST", "/channels/{channel_id}/messages", channel_id=text_id)
        as_audio = await http.request(messages, form=multipart("audio/ogg"))
        as_bytes = await http.request(messages, form=multipart("application/octet-stream"))
        assert as_audio["flags"] == 8192 and as_audio["attachments"][0]["duration_secs"] == 1.0
        assert as_bytes["flags"] == 0 and "duration_secs" not in as_bytes["attachments"][0]
        with pytest.raises(discord.HTTPException) as extra_content:
            await http.request(messages, form=multipart("audio/ogg", content="text"))
        assert extra_content.value.code == 50159

        no_voice = discord.Permissions(send_voice_messages=True)
        guild.set_overwrite(guild.channels[text_id], guild.bot_member, deny=no_voice)
        with pytest.raises(discord.Forbidden) as forbidden:
            await http.request(messages, form=multipart("audio/ogg"))
        assert forbidden.value.code == 50173


async def test_rate_limit_and_server_error_are_retried(emulator: DiscordEmulator, guild: GuildState) -> None:
    text_id = _channel(guild, 0)
    async with emulator.run_client(Bot(emulator)) as client:
        emulator.fail_rest("POST", r"^/channels/\d+/messages$", status=429, retry_after=0.05)
        await client.get_channel(text_id).send("after 429")
        emulator.fail_rest("POST", r"^/channels/\d+/messages$", status=500)
        await client.get_channel(text_id).send("after 500")
    statuses = [r.status for r in emulator.requests if r.method == "POST" and "/messages" in r.path]
    assert statuses == [429, 200, 500, 200]
    assert [m.content for m in emulator.channel_messages(text_id)] == ["after 429", "after 500"]


async def test_global_rate_limit_without_via_header_is_an_error(emulator: DiscordEmulator, guild: GuildState) -> None:
    async with emulator.run_client(Bot(emulator)) as client:
        emulator.fail_rest("GET", r"^/users/\d+$", status=429, retry_after=0.05, is_global=True)
        user = await client.fetch_user(_alice(guild))
        assert user.name == "alice"
    assert [r.status for r in emulator.requests if r.path.endswith(f"/users/{_alice(guild)}")] == [429, 200]


def _write_sine(path: Path, seconds: float = 1.0, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(48000 * seconds)) / 48000
    samples = 0.5 * np.sin(2 * np.pi * frequency * t)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return samples


def _best_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = 4000) -> float:
    window = reference[: len(reference) * 4 // 5]
    segment = signal[: len(window) + max_lag]
    dots = np.correlate(segment, window, mode="valid")
    energy = np.sqrt(np.convolve(segment**2, np.ones(len(window)), mode="valid"))
    return float(np.max(dots / (energy * np.linalg.norm(window) + 1e-12)))


async def _play(voice_client: discord.VoiceClient, source: discord.AudioSource) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    voice_client.play(source, after=lambda error: loop.call_soon_threadsafe(done.set))
    await asyncio.wait_for(done.wait(), 10)


async def test_voice_playback_is_received_decrypted_and_decoded(
    emulator: DiscordEmulator, guild: GuildState, tmp_path: Path
) -> None:
    reference = _write_sine(tmp_path / "sine.wav")
    async with emulator.run_client(Bot(emulator)) as client:
        voice_client = await client.get_channel(_channel(guild, 2)).connect(timeout=10)
        source = discord.FFmpegOpusAudio(str(tmp_path / "sine.wav"), executable=imageio_ffmpeg.get_ffmpeg_exe())
        await _play(voice_client, source)
        record = emulator.voice(guild.id)
        (utterance,) = await record.wait_for_utterances(1)
        await voice_client.disconnect()
    connection = record.connections[0]
    assert connection.mode == "aead_xchacha20_poly1305_rtpsize"
    assert connection.identify["user_id"] == str(emulator.bot.id)
    assert utterance.continuous and utterance.trailing_silence == 5
    assert len(utterance.ogg_header_packets) == 2  # discord.py's Ogg reader forwards OpusHead/OpusTags
    assert [flags for _, flags in record.speaking][:2] == [0, 1]
    assert record.decrypt_failures == 0 and record.dropped == 0
    pcm = await utterance.decode()
    assert pcm.shape[1] == 2 and abs(len(pcm) - 48000) < 48000 * 0.2
    assert _best_correlation(pcm.mean(axis=1), reference) >= 0.9


async def test_voice_join_is_ignored_without_connect(emulator: DiscordEmulator, guild: GuildState) -> None:
    voice_id = _channel(guild, 2)
    guild.set_overwrite(guild.channels[voice_id], guild.bot_role, deny=discord.Permissions(connect=True))
    async with emulator.run_client(Bot(emulator)) as client:
        with pytest.raises(asyncio.TimeoutError):
            await client.get_channel(voice_id).connect(timeout=0.3, reconnect=False)
    assert [r.accepted for r in emulator.voice_requests if r.channel_id == voice_id] == [False]
    assert emulator.voice(guild.id).connections == []


async def test_voice_close_4006_mid_playback_reconnects(
    emulator: DiscordEmulator, guild: GuildState, tmp_path: Path
) -> None:
    _write_sine(tmp_path / "long.wav", seconds=3.0)
    async with emulator.run_client(Bot(emulator)) as client:
        voice_client = await client.get_channel(_channel(guild, 2)).connect(timeout=10)
        record = emulator.voice(guild.id)
        source = discord.FFmpegOpusAudio(str(tmp_path / "long.wav"), executable=imageio_ffmpeg.get_ffmpeg_exe())
        playing = asyncio.create_task(_play(voice_client, source))
        # an RTCP receiver report wakes discord.py's UDP reader; without traffic it sits 30 s in select()
        await emulator.wait_for(lambda: record.connections[0].reports_sent >= 1)
        await emulator.close_voice(guild.id, 4006)
        second = await record.wait_connected(2)
        await playing
        await voice_client.disconnect()
    first = record.connections[0]
    assert first.close_codes == [4006] and second.ssrc != first.ssrc
    assert {p.ssrc for p in record.packets} == {first.ssrc, second.ssrc}
    assert all(u.continuous for u in record.utterances)


async def test_udp_blackhole_drops_audio(emulator: DiscordEmulator, guild: GuildState, tmp_path: Path) -> None:
    _write_sine(tmp_path / "short.wav", seconds=0.2)
    async with emulator.run_client(Bot(emulator)) as client:
        voice_client = await client.get_channel(_channel(guild, 2)).connect(timeout=10)
        emulator.udp_blackhole(guild.id)
        await _play(
            voice_client,
            discord.FFmpegOpusAudio(str(tmp_path / "short.wav"), executable=imageio_ffmpeg.get_ffmpeg_exe()),
        )
        record = emulator.voice(guild.id)
        await emulator.wait_for(lambda: record.dropped >= 10)
        await voice_client.disconnect()
    assert record.packets == [] and record.utterances == []


async def test_gateway_resume_replays_missed_events(emulator: DiscordEmulator, guild: GuildState) -> None:
    async with emulator.run_client(Bot(emulator)) as client:
        await emulator.disconnect_gateway(resume=True)
        missed = guild.add_text_channel("while-away")
        await emulator.wait_for(lambda: emulator.gateway.resumes == 1)
        await _until(lambda: client.get_channel(missed.id) is not None)
        emulator.request_reconnect()
        await emulator.wait_for(lambda: emulator.gateway.resumes == 2)
        rec = await emulator.slash_command(guild.id, _channel(guild, 0), _alice(guild), "ask", {"question": "ok?"})
        await rec.wait_for(lambda r: r.followups)
        await emulator.disconnect_gateway(resume=False)
        await emulator.wait_for(lambda: emulator.gateway.identifies == 2)
    assert emulator.gateway.connections == 4


async def test_voice_states_heartbeats_and_forced_disconnect() -> None:
    async with DiscordEmulator(voice_heartbeat_interval_ms=50) as emulator:
        with emulator.patch():
            guild = emulator.add_guild("Heartbeat Guild")
            lounge = guild.add_voice_channel("Lounge")
            alice = guild.add_member("alice")
            async with emulator.run_client(Bot(emulator)) as client:
                await emulator.set_voice_state(guild.id, alice.id, lounge.id)
                await _until(lambda: [m.id for m in client.get_channel(lounge.id).members] == [alice.id])
                voice_client = await client.get_channel(lounge.id).connect(timeout=10)
                record = emulator.voice(guild.id)
                await emulator.wait_for(lambda: record.connections[0].heartbeats >= 2)
                await _until(lambda: voice_client.latency < float("inf"))
                assert client.latency < float("inf") and emulator.gateway.heartbeats >= 1
                await emulator.set_voice_state(guild.id, emulator.bot.id, None)
                await _until(lambda: not voice_client.is_connected() and not client.voice_clients)
    assert record.connections[0].close_codes == [4014]
    assert not emulator.internal_errors


class ShardBot(commands.AutoShardedBot):
    """A sharded client recording the interactions it receives."""

    def __init__(self, emu: DiscordEmulator, **options: object) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default(), **emu.client_options(), **options)
        self.interactions: list[int] = []

        @app_commands.command(name="where", description="Which shard answers")
        async def where(interaction: discord.Interaction) -> None:
            self.interactions.append(interaction.guild_id or 0)
            await interaction.response.send_message(f"shard {interaction.guild.shard_id}")  # type: ignore[union-attr]

        self.tree.add_command(where)

    async def setup_hook(self) -> None:
        await self.tree.sync()


async def test_shards_get_only_their_guilds_interactions_and_voice(emulator: DiscordEmulator) -> None:
    guilds = [emulator.add_guild(f"Guild {i}", shard=(i % 2, 2)) for i in range(4)]
    lounges = [guild.add_voice_channel("Lounge") for guild in guilds]
    alice = emulator.add_user("alice")
    for guild in guilds:
        guild.add_member(alice)
    clients = [ShardBot(emulator, shard_count=2, shard_ids=[shard]) for shard in (0, 1)]
    async with emulator.run_client(clients[0]), emulator.run_client(clients[1]):
        assert [sorted(g.id for g in c.guilds) for c in clients] == [
            sorted(g.id for g in guilds[0::2]),
            sorted(g.id for g in guilds[1::2]),
        ]
        for index, guild in enumerate(guilds):
            channel = guild.add_text_channel("general")
            await emulator.wait_until_connected(guild_id=guild.id)
            record = await emulator.slash_command(guild.id, channel.id, alice.id, "where")
            assert (await record.wait_for_response()).data["content"] == f"shard {index % 2}"
        assert [c.interactions for c in clients] == [[g.id for g in guilds[0::2]], [g.id for g in guilds[1::2]]]

        voice_client = await clients[1].get_channel(lounges[1].id).connect(timeout=10)
        assert voice_client.is_connected() and len(emulator.voice(guilds[1].id).connections) == 1
        await clients[0]._get_websocket(shard_id=0).voice_state(guilds[3].id, lounges[3].id)
        await emulator.wait_for(lambda: emulator.gateway.misrouted)
        assert [int(frame["d"]["guild_id"]) for frame in emulator.gateway.misrouted] == [guilds[3].id]
        assert [r.guild_id for r in emulator.voice_requests] == [guilds[1].id]
        emulator.gateway.misrouted.clear()  # sent on purpose
        await voice_client.disconnect()
    gateway_bot = [r for r in emulator.requests if r.path == "/api/v10/gateway/bot"]
    assert not gateway_bot  # the shard count was given: no need to ask Discord
