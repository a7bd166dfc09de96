"""The main gateway: HELLO, heartbeats, IDENTIFY → READY, RESUME, dispatches gated by intents, one session per shard.

A guild belongs to shard ``(guild_id >> 22) % shard_count``; its events go to that shard's session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .records import Notifier
from .world import Json, World, shard_of

GUILDS, GUILD_MEMBERS, GUILD_VOICE_STATES, GUILD_MESSAGES = 1 << 0, 1 << 1, 1 << 7, 1 << 9
PRIVILEGED_INTENTS = GUILD_MEMBERS | (1 << 8) | (1 << 15)
_EVENT_INTENTS = {
    "GUILD_CREATE": GUILDS,
    "GUILD_DELETE": GUILDS,
    "GUILD_ROLE_CREATE": GUILDS,
    "GUILD_ROLE_UPDATE": GUILDS,
    "CHANNEL_CREATE": GUILDS,
    "CHANNEL_UPDATE": GUILDS,
    "CHANNEL_DELETE": GUILDS,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "VOICE_STATE_UPDATE": GUILD_VOICE_STATES,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES,
}


@dataclass
class Dispatch:
    """One dispatched event; ``sent_at`` is set when it was written to the socket."""

    payload: Json
    on_sent: Callable[[float], None] | None = None
    sent_at: float | None = None
    sent: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def mark_sent(self) -> None:
        """Record the send time (only the first send counts)."""
        if self.sent_at is None:
            self.sent_at = time.monotonic()
            if self.on_sent is not None:
                self.on_sent(self.sent_at)
            self.sent.set_result(self.sent_at)


class _Connection:
    """One websocket: a queue and a writer task keep frames in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[Dispatch | Json] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())

    def send(self, frame: Dispatch | Json) -> None:
        self.queue.put_nowait(frame)

    async def _write(self) -> None:
        while True:
            frame = await self.queue.get()
            payload = frame.payload if isinstance(frame, Dispatch) else frame
            try:
                await self.ws.send_str(json.dumps(payload))
            except ConnectionError:
                return
            if isinstance(frame, Dispatch):
                frame.mark_sent()


@dataclass
class GatewaySession:
    """A gateway session of one shard; it survives reconnects through RESUME."""

    id: str
    intents: int
    identify: Json
    shard_id: int = 0
    shard_count: int = 1
    seq: int = 0
    history: list[Dispatch] = field(default_factory=list)
    announced: set[int] = field(default_factory=set)
    connection: _Connection | None = None

    def owns(self, guild_id: int) -> bool:
        """Whether the guild's events go to this shard."""
        return shard_of(guild_id, self.shard_count) == self.shard_id


class Gateway:
    """Serves the gateway websocket for one bot (all its shards); counters and logs are kept for assertions."""

    def __init__(
        self,
        world: World,
        notifier: Notifier,
        token: str,
        *,
        heartbeat_interval_ms: int,
        privileged_intents: int,
        on_voice_request: Callable[[Json], Awaitable[None]],
    ) -> None:
        self.world = world
        self._notifier = notifier
        self._token = token
        self._heartbeat_ms = heartbeat_interval_ms
        self._privileged = privileged_intents
        self._on_voice_request = on_voice_request
        self.url = ""
        self.sessions: dict[int, GatewaySession] = {}  # by shard id
        self.accepting = asyncio.Event()  # cleared while the gateway is down: new sockets get no HELLO
        self.accepting.set()
        self.connections = 0
        self.identifies = 0
        self.resumes = 0
        self.heartbeats = 0
        self.close_codes: list[int] = []
        self.received: list[Json] = []
        self.misrouted: list[Json] = []  # guild frames (op 4, op 8) sent on another shard's connection: ignored

    @property
    def session(self) -> GatewaySession | None:
        """Shard 0's session (the only one of an unsharded client)."""
        return self.sessions.get(0)

    @property
    def ready(self) -> bool:
        """Whether a session is identified and every session's socket is open."""
        return bool(self.sessions) and all(s.connection is not None for s in self.sessions.values())

    def session_for(self, guild_id: int) -> GatewaySession | None:
        """The session of the shard the guild belongs to, if that shard identified."""
        return next((s for s in self.sessions.values() if s.owns(guild_id)), None)

    def dispatch(
        self,
        event: str,
        data: Any,
        on_sent: Callable[[float], None] | None = None,
        *,
        guild_id: int | None = None,
        session: GatewaySession | None = None,
    ) -> Dispatch | None:
        """Queue an event (kept for RESUME) for ``session``, else the guild's shard, else shard 0; None when
        there is no such session or it lacks the intent."""
        if session is None:
            session = self.session_for(guild_id) if guild_id is not None else self.session
        required = _EVENT_INTENTS.get(event)
        if session is None or (required is not None and not session.intents & required):
            return None
        session.seq += 1
        entry = Dispatch({"op": 0, "t": event, "s": session.seq, "d": data}, on_sent)
        session.history.append(entry)
        if session.connection is not None:
            session.connection.send(entry)
        return entry

    def announce(self, guild_id: int) -> None:
        """Send GUILD_CREATE for a guild the bot is in to its shard, once per session."""
        session = self.session_for(guild_id)
        guild = self.world.guilds.get(guild_id)
        if session is None or guild is None or guild.bot_member is None or guild_id in session.announced:
            return
        session.announced.add(guild_id)
        self.dispatch("GUILD_CREATE", guild.payload(), session=session)

    def _connected(self, shard_id: int | None) -> list[_Connection]:
        sessions = self.sessions.values() if shard_id is None else [self.sessions[shard_id]]
        connections = [s.connection for s in sessions if s.connection is not None]
        if not connections:
            raise RuntimeError("no gateway connection")
        return connections

    async def close(self, code: int, shard_id: int | None = None) -> None:
        """Close the sockets of every shard (or of one) with ``code``."""
        for connection in self._connected(shard_id):
            await connection.ws.close(code=code)

    def send_op(self, op: int, data: Any, shard_id: int | None = None) -> None:
        """Send a non-dispatch opcode (e.g. 7 RECONNECT, 9 INVALID_SESSION) to every shard (or one)."""
        for connection in self._connected(shard_id):
            connection.send({"op": op, "d": data})

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The gateway websocket endpoint."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.accepting.wait()
        connection = _Connection(ws)
        self.connections += 1
        connection.send({"op": 10, "d": {"heartbeat_interval": self._heartbeat_ms}})
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._receive(connection, json.loads(message.data))
        finally:
            connection.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection.writer
            for session in self.sessions.values():
                if session.connection is connection:
                    session.connection = None
            self.close_codes.append(ws.close_code or 1000)
            self._notifier.notify()
        return ws

    async def _receive(self, connection: _Connection, frame: Json) -> None:
        op, data = frame.get("op"), frame.get("d")
        self.received.append(frame)
        if op == 1:
            self.heartbeats += 1
            connection.send({"op": 11})
        elif op == 2:
            await self._identify(connection, data)
        elif op == 6:
            self._resume(connection, data)
        elif op in (4, 8) and not self._routed(connection, int(data["guild_id"])):
            self.misrouted.append(frame)
        elif op == 4:
            await self._on_voice_request(data)
        elif op == 8:
            self._request_members(data)
        self._notifier.notify()

    def _routed(self, connection: _Connection, guild_id: int) -> bool:
        """Whether a frame about the guild came on its shard's connection."""
        session = self.session_for(guild_id)
        return session is not None and session.connection is connection

    async def _identify(self, connection: _Connection, data: Json) -> None:
        if data.get("token") != self._token:
            await connection.ws.close(code=4004)  # authentication failed
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self._privileged:
            await connection.ws.close(code=4014)  # disallowed intents
            return
        shard_id, shard_count = data.get("shard") or (0, 1)
        if not 0 <= shard_id < shard_count:
            await connection.ws.close(code=4010)  # invalid shard
            return
        self.identifies += 1
        session = GatewaySession(secrets.token_hex(16), intents, data, shard_id, shard_count, connection=connection)
        self.sessions[shard_id] = session
        bot_guilds = [g for g in self.world.guilds.values() if g.bot_member is not None and session.owns(g.id)]
        self.dispatch(
            "READY",
            {
                "v": 10,
                "user": self.world.bot.payload(),
                "guilds": [{"id": str(g.id), "unavailable": True} for g in bot_guilds],
                "session_id": session.id,
                "session_type": "normal",
                "resume_gateway_url": self.url,
                "application": {"id": str(self.world.application_id), "flags": 0},
                "shard": [shard_id, shard_count],
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": ["local"],
                "user_settings": {},
            },
            session=session,
        )
        for guild in bot_guilds:
            self.announce(guild.id)

    def _resume(self, connection: _Connection, data: Json) -> None:
        session = next((s for s in self.sessions.values() if s.id == data.get("session_id")), None)
        if session is None or data.get("token") != self._token:
            connection.send({"op": 9, "d": False})
            return
        self.resumes += 1
        session.connection = connection
        last = int(data.get("seq") or 0)
        for entry in session.history:
            if entry.payload["s"] > last:
                connection.send(entry)
        self.dispatch("RESUMED", {}, session=session)

    def _request_members(self, data: Json) -> None:
        guild = self.world.guilds[int(data["guild_id"])]
        wanted = {int(u) for u in data.get("user_ids") or []}
        members = [m.payload() for m in guild.members.values() if not wanted or m.id in wanted]
        chunk: Json = {"guild_id": str(guild.id), "members": members, "chunk_index": 0, "chunk_count": 1}
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        self.dispatch("GUILD_MEMBERS_CHUNK", chunk, guild_id=guild.id)
