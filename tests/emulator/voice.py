"""The voice side: a v8 voice gateway over TLS with DAVE (see `dave`), UDP IP discovery and RTP reception, as the
far-end members hear it, split into utterances."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import ssl
import struct
import time
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import numpy as np
from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .dave import (
    COMMIT_WELCOME,
    INVALID_COMMIT_WELCOME,
    KEY_PACKAGE,
    PLAIN,
    PROTOCOL_VERSION,
    TRANSITION_READY,
    DaveCall,
    FarEndMember,
)
from .opus import OGG_HEADER_PACKETS, OPUS_SILENCE, decode_opus, opus_samples
from .records import Notifier
from .world import Json

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES_GCM = "aead_aes256_gcm_rtpsize"
MODES = [AES_GCM, XCHACHA]  # Discord's order; discord.py 2.7.1 only supports the second
SAMPLES_PER_FRAME = 960
TRAILING_SILENCE_FRAMES = 5
REPORT_EVERY_PACKETS = 50  # about one RTCP receiver report per second of audio
REPORT_INTERVAL = 0.5  # and one at least this often to every connected client, audio or not


@dataclass(frozen=True)
class RtpPacket:
    """A received RTP packet: ``frame`` is what travelled inside transport encryption (a DAVE frame when the call
    is end-to-end encrypted), ``payload`` the Opus the first far-end member got from it, ``e2e`` how (see
    `dave`: "e2e", "passthrough", "plain" or "undecryptable") and ``secured`` whether it was sent after a
    transition to an encrypted group that has the sender."""

    sequence: int
    timestamp: int
    ssrc: int
    arrival: float
    payload: bytes
    frame: bytes = b""
    e2e: str = PLAIN
    secured: bool = False

    @property
    def silence(self) -> bool:
        """Whether this is the Opus silence frame players send when they stop."""
        return self.payload == OPUS_SILENCE

    @property
    def ogg_header(self) -> bool:
        """Whether the payload is an Ogg ``OpusHead``/``OpusTags`` header, not audio."""
        return self.payload.startswith(OGG_HEADER_PACKETS)


class Utterance:
    """Consecutive packets of one stretch of speech, with continuity checks and decoded audio."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.complete = False
        self._split_pending = False
        self._pcm: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"<Utterance packets={len(self.packets)} complete={self.complete}>"

    @property
    def audio_packets(self) -> list[RtpPacket]:
        """Packets carrying Opus audio (Ogg header packets excluded)."""
        return [p for p in self.packets if not p.ogg_header]

    @property
    def ogg_header_packets(self) -> list[RtpPacket]:
        """Packets that carried Ogg headers instead of Opus (a sender bug Discord clients would play)."""
        return [p for p in self.packets if p.ogg_header]

    @property
    def trailing_silence(self) -> int:
        """How many silence frames end the utterance."""
        count = 0
        for packet in reversed(self.packets):
            if not packet.silence:
                break
            count += 1
        return count

    @property
    def started_at(self) -> float:
        """Arrival time of the first packet."""
        return self.packets[0].arrival

    @property
    def ended_at(self) -> float:
        """Arrival time of the last packet."""
        return self.packets[-1].arrival

    @property
    def duration(self) -> float:
        """Seconds of audio carried by the audio packets."""
        return sum(opus_samples(p.payload) for p in self.audio_packets) / 48000

    @property
    def arrival_gaps(self) -> list[float]:
        """Seconds between consecutive packet arrivals."""
        return [b.arrival - a.arrival for a, b in itertools.pairwise(self.packets)]

    def sequence_gaps(self) -> list[tuple[int, int]]:
        """(previous, next) sequence pairs that are not consecutive (mod 2**16)."""
        return [
            (a.sequence, b.sequence)
            for a, b in itertools.pairwise(self.packets)
            if (b.sequence - a.sequence) % 65536 != 1
        ]

    def timestamp_errors(self) -> list[tuple[int, int]]:
        """(previous, next) timestamp pairs that do not step by 960 (mod 2**32)."""
        return [
            (a.timestamp, b.timestamp)
            for a, b in itertools.pairwise(self.packets)
            if (b.timestamp - a.timestamp) % 2**32 != SAMPLES_PER_FRAME
        ]

    @property
    def continuous(self) -> bool:
        """No sequence gaps and every timestamp step is 960."""
        return not self.sequence_gaps() and not self.timestamp_errors()

    async def decode(self) -> np.ndarray:
        """The audio decoded with ffmpeg: float32, 48 kHz, shape (samples, 2); cached."""
        if self._pcm is None:
            self._pcm = await decode_opus([p.payload for p in self.audio_packets])
        return self._pcm


class VoiceSocket:
    """Frames to one voice client, in order: JSON with ``seq``; binary as u16 sequence + u8 opcode + payload."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.seq = 0
        self._queue: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name="emulator voice socket writer")

    def post_json(self, op: int, data: object) -> None:
        """Queue a JSON frame."""
        self.seq += 1
        self._queue.put_nowait(json.dumps({"op": op, "d": data, "seq": self.seq}))

    def post_binary(self, op: int, payload: bytes) -> None:
        """Queue a binary frame."""
        self.seq += 1
        self._queue.put_nowait(struct.pack(">HB", self.seq & 0xFFFF, op) + payload)

    async def _write(self) -> None:
        while True:
            frame = await self._queue.get()
            if self.ws.closed:
                continue
            with contextlib.suppress(ConnectionResetError):
                await (self.ws.send_str(frame) if isinstance(frame, str) else self.ws.send_bytes(frame))

    def close(self) -> None:
        """Stop writing."""
        self._writer.cancel()


@dataclass
class VoiceConnectionRecord:
    """One voice websocket session (a resume keeps the record); a participant of its channel's `DaveCall`."""

    guild_id: int
    channel_id: int
    user_id: int
    session_id: str
    token: str
    identify: Json
    ssrc: int
    udp_port: int
    mode: str | None = None
    secret_key: bytes | None = None
    client_address: tuple[str, int] | None = None
    heartbeats: int = 0
    resumes: int = 0
    packets_received: int = 0
    reports_sent: int = 0
    close_codes: list[int] = field(default_factory=list)
    other_ops: list[Json] = field(default_factory=list)
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    socket: VoiceSocket | None = field(default=None, repr=False)
    transport: asyncio.DatagramTransport | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        """Whether its websocket is open."""
        return self.ws is not None and not self.ws.closed

    def post_json(self, op: int, data: object) -> None:
        """Queue a JSON frame to the client."""
        if self.socket is not None:
            self.socket.post_json(op, data)

    def post_binary(self, op: int, payload: bytes) -> None:
        """Queue a binary frame to the client."""
        if self.socket is not None:
            self.socket.post_binary(op, payload)


class VoiceRecord:
    """Everything received for one guild's voice: connections, SPEAKING, packets and utterances."""

    def __init__(self, guild_id: int, notifier: Notifier, utterance_gap: float) -> None:
        self.guild_id = guild_id
        self._notifier = notifier
        self._gap = utterance_gap
        self._timer: asyncio.TimerHandle | None = None
        self.connections: list[VoiceConnectionRecord] = []
        self.speaking: list[tuple[float, int]] = []
        self.packets: list[RtpPacket] = []
        self.utterances: list[Utterance] = []
        self.blackhole = False
        self.dropped = 0
        self.decrypt_failures = 0
        self.refusals: list[int] = []  # close codes of identifies refused before a connection was made

    @property
    def connection(self) -> VoiceConnectionRecord | None:
        """The latest connection."""
        return self.connections[-1] if self.connections else None

    @property
    def _current(self) -> Utterance | None:
        return self.utterances[-1] if self.utterances and not self.utterances[-1].complete else None

    def on_speaking(self, flags: int) -> None:
        """Record SPEAKING; ``0`` ends the current utterance at its next audio packet."""
        self.speaking.append((time.monotonic(), flags))
        if flags == 0 and (current := self._current):
            current._split_pending = True
        self._notifier.notify()

    def add_packet(self, packet: RtpPacket) -> None:
        """File a packet into the current utterance or start a new one."""
        self.packets.append(packet)
        current = self._current
        if not packet.silence and (
            current is None
            or current._split_pending
            or current.trailing_silence
            or packet.arrival - current.ended_at > self._gap
        ):
            self._finish()
            current = Utterance()
            self.utterances.append(current)
        if current is None:
            return
        current.packets.append(packet)
        if current.trailing_silence >= TRAILING_SILENCE_FRAMES:
            self._finish()
        else:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._gap, self._finish)
        self._notifier.notify()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if current := self._current:
            current.complete = True
            self._notifier.notify()

    async def wait_for_utterances(self, count: int = 1, timeout: float = 10.0) -> list[Utterance]:
        """Wait until ``count`` utterances are complete and return all complete ones."""
        return await self._notifier.wait_for(
            lambda: (done := [u for u in self.utterances if u.complete]) and len(done) >= count and done,
            timeout,
            f"{count} utterance(s) in guild {self.guild_id}",
        )

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> VoiceConnectionRecord:
        """Wait until ``count`` connections got their SESSION_DESCRIPTION; return the latest."""
        return await self._notifier.wait_for(
            lambda: len([c for c in self.connections if c.secret_key]) >= count and self.connections[-1],
            timeout,
            f"voice connection #{count} in guild {self.guild_id}",
        )


@dataclass
class _Allocation:
    guild_id: int
    channel_id: int
    session_id: str
    user_id: int


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer, connection: VoiceConnectionRecord) -> None:
        self.server = server
        self.connection = connection

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_datagram(self.connection, data, addr)


def _encrypt(mode: str, key: bytes, aad: bytes, plain: bytes, counter: bytes) -> bytes:
    """Encrypt with an ``*_rtpsize`` mode (the 4-byte counter is the nonce's start)."""
    if mode == XCHACHA:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, aad, counter + bytes(20), key)
    return AESGCM(key).encrypt(counter + bytes(8), plain, aad)


def _decrypt(mode: str, key: bytes, data: bytes) -> bytes:
    """Decrypt an ``*_rtpsize`` RTP packet and return the Opus payload."""
    header_len = 12 + 4 * (data[0] & 0x0F) + (4 if data[0] & 0x10 else 0)
    aad, ciphertext, counter = data[:header_len], data[header_len:-4], data[-4:]
    if mode == XCHACHA:
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, counter + bytes(20), key)
    else:
        plain = AESGCM(key).decrypt(counter + bytes(8), ciphertext, aad)
    if data[0] & 0x10:  # header extension: its body is part of the encrypted payload
        plain = plain[4 * struct.unpack_from(">H", data, header_len - 2)[0] :]
    return plain


class VoiceServer:
    """Voice websocket (wss, v8) plus one UDP socket per voice connection, on 127.0.0.1; each voice channel is a
    `DaveCall` on DAVE protocol version 1 (``dave=False``: version 0, transport encryption only) whose far-end
    members are the guild members sitting in that channel."""

    def __init__(
        self,
        notifier: Notifier,
        ssl_context: ssl.SSLContext,
        utterance_gap: float,
        heartbeat_interval_ms: int,
        dave: bool = True,
    ) -> None:
        self._notifier = notifier
        self.dave = dave
        self.calls: dict[int, DaveCall] = {}
        self._heartbeat_ms = heartbeat_interval_ms
        self._ssl = ssl_context
        self._gap = utterance_gap
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.allocations: dict[str, _Allocation] = {}
        self.records: dict[int, VoiceRecord] = {}
        self._server_closes: dict[web.WebSocketResponse, int] = {}
        self._reporter: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """The ``host:port`` sent in VOICE_SERVER_UPDATE."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a random port."""
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._reporter = asyncio.create_task(self._report_periodically(), name="emulator rtcp reports")

    async def stop(self) -> None:
        """Close every websocket and UDP socket."""
        if self._reporter is not None:
            self._reporter.cancel()
        for call in self.calls.values():
            call.close()
        for record in self.records.values():
            record._finish()
            for connection in record.connections:
                if connection.transport is not None:
                    connection.transport.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def record(self, guild_id: int) -> VoiceRecord:
        """The voice record of a guild (created on first use)."""
        if guild_id not in self.records:
            self.records[guild_id] = VoiceRecord(guild_id, self._notifier, self._gap)
        return self.records[guild_id]

    def call(self, channel_id: int) -> DaveCall:
        """The DAVE session of a voice channel (created on first use)."""
        if channel_id not in self.calls:
            self.calls[channel_id] = DaveCall(channel_id, self._notifier, protocol_version=int(self.dave))
        return self.calls[channel_id]

    def set_member_channel(self, user_id: int, channel_id: int | None) -> None:
        """A member (not the bot) moved to a voice channel or out of voice: they leave their call and join the
        channel's as a far-end member."""
        for call in self.calls.values():
            member = call.participants.get(user_id)
            if isinstance(member, FarEndMember) and call.channel_id != channel_id:
                call.leave(user_id)
                member.close()
        if channel_id is not None and not isinstance(self.call(channel_id).participants.get(user_id), FarEndMember):
            FarEndMember(user_id, self.call(channel_id)).start()

    def _leave_call(self, connection: VoiceConnectionRecord) -> None:
        call = self.calls.get(connection.channel_id)
        if call is not None and call.participants.get(connection.user_id) is connection:
            call.leave(connection.user_id)

    def allocate(self, guild_id: int, channel_id: int, session_id: str, user_id: int) -> str:
        """Issue a voice token for VOICE_SERVER_UPDATE."""
        token = secrets.token_hex(8)
        self.allocations[token] = _Allocation(guild_id, channel_id, session_id, user_id)
        return token

    async def close(self, guild_id: int, code: int) -> None:
        """Close the guild's open voice websocket with ``code``."""
        connection = self.record(guild_id).connection
        if connection is None or not connection.open:
            raise RuntimeError(f"no open voice connection in guild {guild_id}")
        if code in (4006, 4014):  # the session is gone: the client must start over
            self.allocations.pop(connection.token, None)
        assert connection.ws is not None
        await self._close(connection.ws, code)

    async def _close(self, ws: web.WebSocketResponse, code: int) -> None:
        self._server_closes[ws] = code
        await ws.close(code=code)

    # -- websocket ------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        socket = VoiceSocket(ws)
        connection: VoiceConnectionRecord | None = None
        socket.post_json(8, {"heartbeat_interval": self._heartbeat_ms})
        try:
            async for message in ws:
                if message.type is WSMsgType.BINARY and connection is not None:
                    self._on_binary(connection, message.data)
                elif message.type is WSMsgType.TEXT:
                    connection = await self._on_json(ws, socket, connection, json.loads(message.data))
        finally:
            socket.close()
        code = self._server_closes.pop(ws, ws.close_code or 1000)
        if connection is not None and connection.ws is ws:
            connection.close_codes.append(code)
            if code != 4015:  # anything but a resumable close ends the client's part in the call
                self._leave_call(connection)
            self._notifier.notify()
        return ws

    async def _on_json(
        self, ws: web.WebSocketResponse, socket: VoiceSocket, connection: VoiceConnectionRecord | None, frame: Json
    ) -> VoiceConnectionRecord | None:
        """Handle one JSON frame; return the connection the socket now serves."""
        op, data = frame["op"], frame.get("d")
        if op == 0:
            connection = await self._identify(ws, socket, data)
            if connection is not None:
                socket.post_json(
                    2,
                    {
                        "ssrc": connection.ssrc,
                        "ip": "127.0.0.1",
                        "port": connection.udp_port,
                        "modes": MODES,
                        "heartbeat_interval": 1,
                    },
                )
        elif op == 7:
            connection = self._resume(ws, socket, data)
            if connection is None:
                await self._close(ws, 4006)
            else:
                socket.post_json(9, None)
        elif connection is None:
            await self._close(ws, 4003)  # not authenticated
        elif op == 1:
            if data["data"]["mode"] not in MODES:
                await self._close(ws, 4016)
                return connection
            connection.mode = data["data"]["mode"]
            connection.client_address = (data["data"]["address"], data["data"]["port"])
            connection.secret_key = os.urandom(32)
            call = self.call(connection.channel_id)
            socket.post_json(
                4,
                {
                    "mode": connection.mode,
                    "secret_key": list(connection.secret_key),
                    "dave_protocol_version": call.protocol_version,
                    "audio_codec": "opus",
                    "video_codec": None,
                    "media_session_id": secrets.token_hex(16),
                },
            )
            call.join(connection)
            self._notifier.notify()
        elif op == 3:
            connection.heartbeats += 1
            self._notifier.notify()
            socket.post_json(6, {"t": data["t"]} if isinstance(data, dict) else data)
        elif op == 5:
            self.record(connection.guild_id).on_speaking(int(data["speaking"]))
        elif op == TRANSITION_READY:
            self.call(connection.channel_id).ready(connection.user_id, int(data["transition_id"]))
        elif op == INVALID_COMMIT_WELCOME:
            self.call(connection.channel_id).invalid_commit_welcome(connection.user_id, int(data["transition_id"]))
        else:
            connection.other_ops.append(frame)
        return connection

    def _on_binary(self, connection: VoiceConnectionRecord, data: bytes) -> None:
        """A client's binary frame: opcode, then the payload."""
        call = self.call(connection.channel_id)
        if data[:1] == bytes([KEY_PACKAGE]):
            call.key_package(connection.user_id, data[1:])
        elif data[:1] == bytes([COMMIT_WELCOME]):
            call.commit_welcome(connection.user_id, data[1:])
        else:
            connection.other_ops.append({"binary": data})

    async def _identify(
        self, ws: web.WebSocketResponse, socket: VoiceSocket, data: Json
    ) -> VoiceConnectionRecord | None:
        allocation = self.allocations.get(data.get("token", ""))
        if allocation is None or data.get("server_id") != str(allocation.guild_id):
            await self._close(ws, 4004)  # authentication failed
            return None
        if data.get("session_id") != allocation.session_id or data.get("user_id") != str(allocation.user_id):
            await self._close(ws, 4006)  # session no longer valid
            return None
        if self.dave and int(data.get("max_dave_protocol_version") or 0) < PROTOCOL_VERSION:
            self.record(allocation.guild_id).refusals.append(4017)
            await self._close(ws, 4017)  # E2EE/DAVE protocol required
            return None
        loop = asyncio.get_running_loop()
        connection = VoiceConnectionRecord(
            guild_id=allocation.guild_id,
            channel_id=allocation.channel_id,
            user_id=allocation.user_id,
            session_id=allocation.session_id,
            token=data["token"],
            identify=data,
            ssrc=secrets.randbits(31) + 1,
            udp_port=0,
            ws=ws,
            socket=socket,
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self, connection), local_addr=("127.0.0.1", 0)
        )
        connection.transport = transport
        connection.udp_port = transport.get_extra_info("sockname")[1]
        self.record(allocation.guild_id).connections.append(connection)
        self._notifier.notify()
        return connection

    def _resume(self, ws: web.WebSocketResponse, socket: VoiceSocket, data: Json) -> VoiceConnectionRecord | None:
        record = self.records.get(int(data.get("server_id", 0)))
        connection = record.connection if record else None
        if (
            connection is None
            or connection.token != data.get("token")
            or connection.session_id != data.get("session_id")
            or connection.token not in self.allocations
        ):
            return None
        connection.ws, connection.socket = ws, socket
        connection.resumes += 1
        self._notifier.notify()
        return connection

    # -- UDP --------------------------------------------------------------------------------------------
    def on_datagram(self, connection: VoiceConnectionRecord, data: bytes, addr: tuple[str, int]) -> None:
        """Answer IP discovery; decrypt RTP and file it."""
        record = self.record(connection.guild_id)
        if record.blackhole:
            record.dropped += 1
            return
        if len(data) == 74 and data[:4] == struct.pack(">HH", 1, 70):
            reply = struct.pack(">HHI", 2, 70, connection.ssrc) + addr[0].encode().ljust(64, b"\0")
            assert connection.transport is not None
            connection.transport.sendto(reply + struct.pack(">H", addr[1]), addr)
            return
        if connection.secret_key is None or connection.mode is None or len(data) < 32 or data[0] >> 6 != 2:
            record.dropped += 1
            return
        try:
            payload = _decrypt(connection.mode, connection.secret_key, data)
        except (nacl.exceptions.CryptoError, InvalidTag):
            record.decrypt_failures += 1
            return
        sequence, timestamp, ssrc = struct.unpack_from(">HII", data, 2)
        outcome, opus, secured = self.call(connection.channel_id).hear(connection.user_id, payload)
        record.add_packet(RtpPacket(sequence, timestamp, ssrc, time.monotonic(), opus, payload, outcome, secured))
        connection.packets_received += 1
        if connection.packets_received % REPORT_EVERY_PACKETS == 0:
            self._send_receiver_report(connection, sequence, addr)

    async def _report_periodically(self) -> None:
        """Send receiver reports on a timer too, as Discord does: a client's UDP reader thread only notices a
        reconnect when a datagram arrives on its old socket, so without them a silent client stalls for 30 s."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            for record in self.records.values():
                for connection in record.connections:
                    ready = connection.secret_key is not None and connection.client_address is not None
                    if ready and connection.transport is not None and not connection.transport.is_closing():
                        self._send_receiver_report(connection, 0, connection.client_address)  # type: ignore[arg-type]

    def _send_receiver_report(self, connection: VoiceConnectionRecord, sequence: int, addr: tuple[str, int]) -> None:
        """Like Discord, report reception statistics back to the sender (RTCP RR, payload type 201)."""
        assert connection.transport is not None and connection.mode is not None and connection.secret_key
        header = struct.pack(">BBHI", 0x81, 201, 7, 1)
        block = struct.pack(">IIIIII", connection.ssrc, 0, sequence, 0, 0, 0)
        connection.reports_sent += 1
        counter = struct.pack(">I", connection.reports_sent)
        packet = header + _encrypt(connection.mode, connection.secret_key, header, block, counter) + counter
        connection.transport.sendto(packet, addr)
