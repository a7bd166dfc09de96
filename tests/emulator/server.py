"""``DiscordEmulator``: REST, gateway, voice and attachment servers on 127.0.0.1, plus test triggers."""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import aiohttp
import discord
import trustme
import yarl
from aiohttp import web

from .dave import DaveCall
from .gateway import PRIVILEGED_INTENTS, Dispatch, Gateway
from .records import (
    VOICE_MESSAGE,
    AttachmentRecord,
    CommandSync,
    InteractionRecord,
    MessageRecord,
    Notifier,
    RestFault,
    RestRequest,
    VoiceRequest,
)
from .rest import RestApi
from .voice import VoiceRecord, VoiceServer
from .world import GuildState, Json, UserState, VoiceStateEntry, World, snowflake, snowflake_on_shard

T = TypeVar("T")
MESSAGE_CONTENT_INTENT = 1 << 15
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
_MENTION = re.compile(r"<@!?(\d+)>")

OptionValues = Mapping[str, Any] | list[Json] | None
FileSpec = tuple[str, bytes, str]


@functools.cache
def _tls() -> tuple[trustme.CA, trustme.LeafCert]:
    """One test CA and a certificate for 127.0.0.1, shared by all emulators of the process."""
    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1")


def _option_spec(schema: Json, name: str) -> Json:
    for option in schema.get("options") or []:
        if option["name"] == name:
            return option
    raise LookupError(f"command {schema['name']!r} has no option {name!r}")


class DiscordEmulator:
    """A local Discord for the real discord.py client; see the package docstring for the API."""

    def __init__(
        self,
        *,
        bot_name: str = "Magic 8 Ball",
        heartbeat_interval_ms: int = 41250,
        voice_heartbeat_interval_ms: int = 13750,
        interaction_deadline: float = 3.0,
        utterance_gap: float = 0.5,
        privileged_intents: int = PRIVILEGED_INTENTS,
        recommended_shards: int = 1,
        dave: bool = True,
    ) -> None:
        self.token = f"emulator.{secrets.token_urlsafe(24)}"
        self.world = World(bot_name)
        self.world.on_event = self._on_world_event
        self.app_owner = self.world.add_user("Application Owner")
        self.notifier = Notifier()
        self.interaction_deadline = interaction_deadline
        self.recommended_shards = recommended_shards  # GET /gateway/bot's "shards"
        self.messages: dict[int, MessageRecord] = {}
        self.attachments: dict[int, AttachmentRecord] = {}
        self.pending_uploads: set[str] = set()
        self.uploads: dict[str, tuple[bytes, str | None]] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.command_syncs: list[CommandSync] = []
        self.requests: list[RestRequest] = []
        self.faults: list[RestFault] = []
        self.voice_requests: list[VoiceRequest] = []
        self.internal_errors: list[Exception] = []
        ca, cert = _tls()
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ssl)
        self.client_ssl = ssl.create_default_context()
        ca.configure_trust(self.client_ssl)
        self.rest = RestApi(self)
        self.gateway = Gateway(
            self.world,
            self.notifier,
            self.token,
            heartbeat_interval_ms=heartbeat_interval_ms,
            privileged_intents=privileged_intents,
            on_voice_request=self._on_voice_request,
        )
        self.voice_server = VoiceServer(
            self.notifier, server_ssl, utterance_gap, voice_heartbeat_interval_ms, dave=dave
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the HTTP/gateway server and the voice server on random ports."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_route("*", "/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.gateway.url = self.gateway_url
        await self.voice_server.start()

    async def close(self) -> None:
        """Stop all servers."""
        self.gateway.accepting.set()
        if any(s.connection is not None for s in self.gateway.sessions.values()):
            await self.gateway.close(1001)
        await self.voice_server.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; attachment and upload URLs live here."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The REST base that replaces ``discord.http.Route.BASE``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The gateway URL that replaces ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextmanager
    def patch(self) -> Iterator[DiscordEmulator]:
        """Point discord.py's REST base and default gateway at the emulator; restore on exit."""
        route, websocket = discord.http.Route, discord.gateway.DiscordWebSocket
        saved = route.BASE, websocket.DEFAULT_GATEWAY
        route.BASE, websocket.DEFAULT_GATEWAY = self.api_url, yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            route.BASE, websocket.DEFAULT_GATEWAY = saved

    def connector(self) -> aiohttp.TCPConnector:
        """A connector trusting the emulator's test CA (call inside the running loop)."""
        return aiohttp.TCPConnector(ssl=self.client_ssl)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``discord.Client``: the connector and a short guild-ready wait."""
        return {"connector": self.connector(), "guild_ready_timeout": 0.05}

    @asynccontextmanager
    async def run_client(self, client: discord.Client, timeout: float = 10.0) -> AsyncIterator[discord.Client]:
        """Start ``client`` with the emulator's token, wait for on_ready, close it on exit."""
        task = asyncio.create_task(client.start(self.token), name="emulated discord client")
        deadline = time.monotonic() + timeout
        try:
            while not client.is_ready():
                if task.done():
                    task.result()
                    raise RuntimeError("the client stopped before it became ready")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"emulator: the client was not ready after {timeout}s")
                await asyncio.sleep(0.01)
            yield client
        finally:
            await client.close()
            await asyncio.wait({task}, timeout=5.0)
            task.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    # -- world ----------------------------------------------------------------------------------------
    @property
    def bot(self) -> UserState:
        """The bot's user (its id is also the application id)."""
        return self.world.bot

    def add_user(self, name: str) -> UserState:
        """Create a user that can then join guilds."""
        return self.world.add_user(name)

    def add_guild(
        self, name: str = "Test Guild", owner_id: int | None = None, *, shard: tuple[int, int] | None = None
    ) -> GuildState:
        """Create a guild with the bot in it (``shard=(id, count)``: with an id on that shard); its connected
        shard gets GUILD_CREATE on the next loop turn."""
        guild_id = snowflake_on_shard(*shard) if shard is not None else None
        guild = self.world.add_guild(name, owner_id, guild_id)
        if self.gateway.session_for(guild.id) is not None:
            asyncio.get_running_loop().call_soon(self.gateway.announce, guild.id)
        return guild

    def guild(self, guild_id: int) -> GuildState:
        """A guild by id."""
        return self.world.guilds[guild_id]

    async def remove_bot_from_guild(self, guild_id: int) -> None:
        """Remove the bot from a guild: GUILD_DELETE."""
        guild = self.world.guilds[guild_id]
        guild.members.pop(self.bot.id)
        guild.voice_states.pop(self.bot.id, None)
        session = self.gateway.session_for(guild_id)
        if session is not None:
            session.announced.discard(guild_id)
        await self._sent(self.gateway.dispatch("GUILD_DELETE", {"id": str(guild_id)}, session=session))

    def _on_world_event(self, guild: GuildState, name: str, data: Json) -> None:
        session = self.gateway.session_for(guild.id)
        if session is not None and guild.id in session.announced:
            self.gateway.dispatch(name, data, session=session)

    # -- records --------------------------------------------------------------------------------------
    def commands(self, guild_id: int | None = None) -> list[Json]:
        """The application commands last synced globally (None) or for a guild."""
        for sync in reversed(self.command_syncs):
            if sync.guild_id == guild_id:
                return sync.commands
        return []

    def channel_messages(self, channel_id: int) -> list[MessageRecord]:
        """Messages of a channel in creation order (ephemeral ones included, deleted ones not)."""
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def voice(self, guild_id: int) -> VoiceRecord:
        """The voice record of a guild: connections, SPEAKING, packets, utterances."""
        return self.voice_server.record(guild_id)

    def call(self, channel_id: int) -> DaveCall:
        """The DAVE session of a voice channel: its group, far-end members, commits and transitions."""
        return self.voice_server.call(channel_id)

    def store_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None
    ) -> AttachmentRecord:
        """Store a file and serve it at its URL."""
        attachment_id = snowflake()
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{urllib.parse.quote(filename)}"
        attachment = AttachmentRecord(attachment_id, filename, data, url, content_type)
        self.attachments[attachment_id] = attachment
        return attachment

    def attachment(self, filename: str, data: bytes, content_type: str) -> AttachmentRecord:
        """A file for an attachment option of a slash command."""
        return self.store_attachment(0, filename, data, content_type)

    def _message_payload(self, message: MessageRecord) -> Json:
        payload = message.payload()
        session = self.gateway.session_for(message.guild_id)
        mentioned = any(int(m["id"]) == self.bot.id for m in message.mentions)
        if session and not session.intents & MESSAGE_CONTENT_INTENT and message.author != self.bot and not mentioned:
            payload.update(content="", embeds=[], attachments=[], components=[])
        return payload

    def add_message(self, message: MessageRecord) -> Dispatch | None:
        """Store a message; non-ephemeral ones are dispatched as MESSAGE_CREATE."""
        self.messages[message.id] = message
        self.notifier.notify()
        if message.ephemeral:
            return None
        return self.gateway.dispatch("MESSAGE_CREATE", self._message_payload(message), guild_id=message.guild_id)

    def update_message(self, message: MessageRecord) -> None:
        """Dispatch MESSAGE_UPDATE for an edited non-ephemeral message."""
        self.notifier.notify()
        if not message.ephemeral:
            self.gateway.dispatch("MESSAGE_UPDATE", self._message_payload(message), guild_id=message.guild_id)

    def delete_message(self, message: MessageRecord) -> None:
        """Mark a message deleted and dispatch MESSAGE_DELETE."""
        message.deleted = True
        self.notifier.notify()
        if not message.ephemeral:
            ids = {"id": str(message.id), "channel_id": str(message.channel_id), "guild_id": str(message.guild_id)}
            self.gateway.dispatch("MESSAGE_DELETE", ids, guild_id=message.guild_id)

    # -- waiting --------------------------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, what: str = "a condition") -> T:
        """Wait until ``predicate()`` is truthy (re-checked whenever the emulator records something)."""
        return await self.notifier.wait_for(predicate, timeout, what)

    async def wait_until_connected(self, timeout: float = 10.0, guild_id: int | None = None) -> None:
        """Wait until every identified shard is connected and announced its guilds (with ``guild_id``: until
        that guild's shard is connected and announced it)."""

        def announced(guild: GuildState) -> bool:
            session = self.gateway.session_for(guild.id)
            return session is not None and session.connection is not None and guild.id in session.announced

        def connected() -> bool:
            if guild_id is not None:
                return announced(self.world.guilds[guild_id])
            return self.gateway.ready and all(
                announced(g)
                for g in self.world.guilds.values()
                if g.bot_member is not None and self.gateway.session_for(g.id) is not None
            )

        await self.wait_for(connected, timeout, "a connected, identified client")

    async def wait_for_message(
        self, channel_id: int, predicate: Callable[[MessageRecord], bool] = lambda m: True, timeout: float = 5.0
    ) -> MessageRecord:
        """Wait for a bot message in the channel matching ``predicate``; returns the first match."""
        return await self.wait_for(
            lambda: next((m for m in self.channel_messages(channel_id) if m.author == self.bot and predicate(m)), None),
            timeout,
            f"a bot message in channel {channel_id}",
        )

    async def _sent(self, entry: Dispatch | None, timeout: float = 5.0) -> float:
        """Wait until a dispatch was written to the socket; returns the send time."""
        if entry is None:
            return time.monotonic()
        return await asyncio.wait_for(asyncio.shield(entry.sent), timeout)

    # -- triggers -------------------------------------------------------------------------------------
    def _find_command(self, guild_id: int, name: str, kind: int) -> Json:
        for command in [*self.commands(guild_id), *self.commands(None)]:
            if command["name"] == name and command.get("type", 1) == kind:
                return command
        raise LookupError(f"no synced application command {name!r} of type {kind} for guild {guild_id}")

    def _option(self, guild: GuildState, spec: Json, value: Any, resolved: Json, focused: bool) -> Json:
        kind = spec["type"]
        if kind == 11:
            attachment = value if isinstance(value, AttachmentRecord) else self.attachment(*value)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            value = str(attachment.id)
        elif kind in (6, 9):
            user_id = int(getattr(value, "id", value))
            resolved.setdefault("users", {})[str(user_id)] = self.world.users[user_id].payload()
            if user_id in guild.members:
                member = guild.member(user_id).payload(with_user=False)
                member["permissions"] = str(guild.permissions_for(user_id).value)
                resolved.setdefault("members", {})[str(user_id)] = member
            value = str(user_id)
        elif kind == 7:
            channel = guild.channels[int(getattr(value, "id", value))]
            permissions = guild.permissions_for(self.bot.id, channel.id).value
            resolved.setdefault("channels", {})[str(channel.id)] = {
                **channel.payload(),
                "permissions": str(permissions),
            }
            value = str(channel.id)
        elif kind == 8:
            role = guild.roles[int(getattr(value, "id", value))]
            resolved.setdefault("roles", {})[str(role.id)] = role.payload()
            value = str(role.id)
        option = {"name": spec["name"], "type": kind, "value": value}
        if focused:
            option["focused"] = True
        return option

    def _command_data(
        self, guild_id: int, name: str, kind: int, options: OptionValues, resolved: Json | None, focused: str = ""
    ) -> Json:
        top, *path = name.split() if kind == 1 else [name]
        command = self._find_command(guild_id, top, kind)
        data: Json = {"id": command["id"], "name": top, "type": kind}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        resolved = dict(resolved or {})
        if kind == 1:
            holder, schema = data, command
            for sub in path:
                spec = _option_spec(schema, sub)
                node: Json = {"name": sub, "type": spec["type"]}
                holder["options"] = [node]
                holder, schema = node, spec
            if isinstance(options, Mapping):
                guild = self.world.guilds[guild_id]
                options = [
                    self._option(guild, _option_spec(schema, key), value, resolved, key == focused)
                    for key, value in options.items()
                ]
            holder["options"] = list(options or [])
        if resolved:
            data["resolved"] = resolved
        return data

    async def _interaction(
        self, kind: int, guild_id: int, channel_id: int, user_id: int, data: Json
    ) -> InteractionRecord:
        guild = self.world.guilds[guild_id]
        member = guild.member(user_id).payload()
        member["permissions"] = str(guild.permissions_for(user_id, channel_id).value)
        payload: Json = {
            "id": str(snowflake()),
            "application_id": str(self.world.application_id),
            "type": kind,
            "data": data,
            "guild_id": str(guild_id),
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": guild.channels[channel_id].payload(),
            "member": member,
            "token": secrets.token_urlsafe(48),
            "version": 1,
            "app_permissions": str(guild.permissions_for(self.bot.id, channel_id).value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id)},
            "context": 0,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        record = InteractionRecord(self.notifier, payload)
        self.interactions[record.token] = record
        await self.wait_until_connected(guild_id=guild_id)

        def sent(at: float) -> None:
            record.dispatched_at = at

        await self._sent(self.gateway.dispatch("INTERACTION_CREATE", payload, sent, guild_id=guild_id))
        return record

    async def slash_command(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: OptionValues = None,
        resolved: Json | None = None,
    ) -> InteractionRecord:
        """Invoke a synced slash command ("ask" or "voice set"); ``options`` maps names to values
        (types come from the synced schema; attachments as ``(filename, bytes, content_type)`` or
        ``emu.attachment(...)``) or is a raw list of Discord option objects with ``resolved``."""
        data = self._command_data(guild_id, name, 1, options, resolved)
        return await self._interaction(2, guild_id, channel_id, user_id, data)

    async def autocomplete(
        self, guild_id: int, channel_id: int, user_id: int, name: str, options: Mapping[str, Any], focused: str
    ) -> InteractionRecord:
        """Send an autocomplete interaction (type 4) with ``focused`` being typed; see ``rec.choices``."""
        data = self._command_data(guild_id, name, 1, options, None, focused)
        return await self._interaction(4, guild_id, channel_id, user_id, data)

    async def message_command(
        self, guild_id: int, channel_id: int, user_id: int, name: str, target_message: MessageRecord
    ) -> InteractionRecord:
        """Invoke a message context-menu command on ``target_message``."""
        resolved = {"messages": {str(target_message.id): target_message.payload()}}
        data = self._command_data(guild_id, name, 3, None, resolved)
        data["target_id"] = str(target_message.id)
        return await self._interaction(2, guild_id, channel_id, user_id, data)

    async def post_message(
        self,
        channel_id: int,
        author_id: int,
        content: str = "",
        attachments: Iterable[FileSpec] = (),
        *,
        voice: bool = False,
        duration_secs: float | None = None,
        waveform: str | None = None,
        message_reference: Json | None = None,
    ) -> MessageRecord:
        """A user posts a message (MESSAGE_CREATE); ``voice=True`` makes it a voice message
        (flag 1 << 13, needs ``duration_secs``; ``waveform`` defaults to a flat one)."""
        guild = self.world.guild_of_channel(channel_id)
        files = [self.store_attachment(channel_id, *spec) for spec in attachments]
        flags = 0
        if voice:
            if len(files) != 1 or duration_secs is None:
                raise ValueError("a voice message needs exactly one attachment and duration_secs")
            files[0].duration_secs = duration_secs
            files[0].waveform = waveform or base64.b64encode(bytes([128] * 64)).decode()
            flags = VOICE_MESSAGE
        mentions = [self.world.users[int(i)].payload() for i in _MENTION.findall(content) if int(i) in self.world.users]
        message = MessageRecord(
            id=snowflake(),
            channel_id=channel_id,
            guild_id=guild.id,
            author=self.world.users[author_id],
            content=content,
            flags=flags,
            attachments=files,
            message_reference=message_reference,
            member=guild.member(author_id).payload(with_user=False),
            mentions=mentions,
        )
        await self.wait_until_connected(guild_id=guild.id)
        await self._sent(self.add_message(message))
        return message

    async def set_voice_state(self, guild_id: int, user_id: int, channel_id: int | None) -> None:
        """Move a member into a voice channel or out of voice (VOICE_STATE_UPDATE); for the bot,
        ``None`` is a forced disconnect that also closes its voice websocket with 4014."""
        guild = self.world.guilds[guild_id]
        if channel_id is None:
            guild.voice_states.pop(user_id, None)
        else:
            guild.voice_states[user_id] = VoiceStateEntry(user_id, channel_id, secrets.token_hex(16))
        await self.wait_until_connected(guild_id=guild_id)
        await self._sent(
            self.gateway.dispatch(
                "VOICE_STATE_UPDATE",
                guild.voice_state_payload(user_id, guild.voice_states.get(user_id)),
                guild_id=guild_id,
            )
        )
        if user_id != self.bot.id:
            self.voice_server.set_member_channel(user_id, channel_id)
        connection = self.voice(guild_id).connection
        if user_id == self.bot.id and channel_id is None and connection is not None and connection.open:
            await self.voice_server.close(guild_id, 4014)

    async def _on_voice_request(self, data: Json) -> None:
        """Op 4 from the bot: answer with VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE, or stay silent
        like Discord when the bot lacks CONNECT or the channel is full. A move to another channel first closes the
        open voice websocket with 4014, as Discord does, so the client connects to the new channel's call."""
        guild = self.world.guilds[int(data["guild_id"])]
        channel_id = int(data["channel_id"]) if data.get("channel_id") else None
        accepted = True
        if channel_id is not None:
            permissions = guild.permissions_for(self.bot.id, channel_id)
            limit = guild.channels[channel_id].user_limit
            occupants = sum(
                1 for s in guild.voice_states.values() if s.channel_id == channel_id and s.user_id != self.bot.id
            )
            accepted = permissions.connect and (not limit or occupants < limit or permissions.move_members)
        self.voice_requests.append(
            VoiceRequest(guild.id, channel_id, bool(data.get("self_mute")), bool(data.get("self_deaf")), accepted)
        )
        session = self.gateway.session_for(guild.id)
        if not accepted or session is None:
            return
        if channel_id is None:
            guild.voice_states.pop(self.bot.id, None)
            self.gateway.dispatch("VOICE_STATE_UPDATE", guild.voice_state_payload(self.bot.id, None), session=session)
            return
        entry = VoiceStateEntry(
            self.bot.id, channel_id, session.id, bool(data.get("self_mute")), bool(data.get("self_deaf"))
        )
        previous = guild.voice_states.get(self.bot.id)
        connection = self.voice(guild.id).connection
        if previous is not None and previous.channel_id != channel_id and connection is not None and connection.open:
            # The old channel's voice server drops the bot first: discord.py then waits for the two updates below.
            await self.voice_server.close(guild.id, 4014)
        guild.voice_states[self.bot.id] = entry
        self.gateway.dispatch("VOICE_STATE_UPDATE", guild.voice_state_payload(self.bot.id, entry), session=session)
        token = self.voice_server.allocate(guild.id, channel_id, session.id, self.bot.id)
        server_update = {"token": token, "guild_id": str(guild.id), "endpoint": self.voice_server.endpoint}
        self.gateway.dispatch("VOICE_SERVER_UPDATE", server_update, session=session)

    # -- faults ---------------------------------------------------------------------------------------
    def fail_rest(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        retry_after: float = 0.1,
        is_global: bool = False,
    ) -> RestFault:
        """Answer the next ``times`` requests matching method and path (after ``/api/v10``) with
        ``status``; 429 carries Retry-After, X-RateLimit-* and Via headers and Discord's JSON body."""
        fault = RestFault(method.upper(), path_regex, status, times, retry_after, is_global)
        self.faults.append(fault)
        return fault

    async def close_voice(self, guild_id: int, code: int = 4006) -> None:
        """Close the guild's voice websocket with ``code`` (4006 invalidates the session, 4015 allows RESUME)."""
        await self.voice_server.close(guild_id, code)

    def udp_blackhole(self, guild_id: int, enabled: bool = True) -> None:
        """Drop every UDP datagram of the guild's voice (no IP discovery answers, no audio recorded)."""
        self.voice(guild_id).blackhole = enabled

    async def disconnect_gateway(self, resume: bool = True, shard_id: int | None = None) -> None:
        """Drop the gateway of every shard (or one): close with 4000 so the client RESUMEs, or
        (``resume=False``) send INVALID_SESSION so it identifies again."""
        if resume:
            await self.gateway.close(4000, shard_id)
        else:
            self.gateway.send_op(9, False, shard_id)

    def request_reconnect(self, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT to every shard (or one); the client reconnects and RESUMEs."""
        self.gateway.send_op(7, None, shard_id)

    @asynccontextmanager
    async def gateway_down(self) -> AsyncIterator[None]:
        """An outage: every shard's socket closes with 4000 and reconnecting sockets get no HELLO until the
        block ends; then they RESUME."""
        self.gateway.accepting.clear()
        try:
            await self.gateway.close(4000)
            yield
        finally:
            self.gateway.accepting.set()
