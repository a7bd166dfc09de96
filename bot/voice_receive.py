"""Members' audio from discord.py's voice connection, which only sends: SSRC → member, and one guild's receiver.

`ListeningVoiceClient` keeps which member each SSRC is (the voice gateway's SPEAKING, op 5) and tells its
listeners when a new voice session begins (op 4 after a reconnect: new key, new SSRCs). `VoiceReceiver` reads
the connection's UDP socket (a socket listener on discord.py's reader thread), drops every packet of members
nobody listens to before decrypting anything, and runs the rest through `audio.listen` on the event loop:
transport decryption, DAVE decryption with the connection's own session, jitter buffer, Opus, voice activity,
utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import davey
import discord
from discord.voice_state import VoiceConnectionState

from audio.errors import UserFacingError
from audio.listen.rtp import Dave, PacketError, decrypt_transport, open_frame, parse_header, peek_ssrc
from audio.listen.segmenter import SegmenterConfig, Utterance
from audio.listen.stream import MemberStream
from audio.listen.vad import WebRtcVad

log = logging.getLogger(__name__)

SESSION_DESCRIPTION, SPEAKING, CLIENT_DISCONNECT = 4, 5, 13
OPUS_PAYLOAD_TYPE = 0x78
TICK_SECONDS = 0.05  # how often quiet members and start deadlines are checked
FORGET_SECONDS = 10.0  # open mic: a member's decoder is dropped after this long without a packet


class ListeningVoiceClient(discord.VoiceClient):
    """A voice client that knows whose audio each SSRC carries."""

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        self.ssrc_users: dict[int, int] = {}  # read by the socket thread: replaced entries, never iterated there
        self.session_listeners: list[Callable[[], None]] = []
        super().__init__(client, channel)

    def create_connection_state(self) -> VoiceConnectionState:
        return VoiceConnectionState(self, hook=self._on_voice_event)

    async def _on_voice_event(self, ws: Any, message: dict[str, Any]) -> None:
        op, data = message.get("op"), message.get("d")
        if op == SPEAKING and isinstance(data, dict) and "ssrc" in data and "user_id" in data:
            self.ssrc_users[int(data["ssrc"])] = int(data["user_id"])
        elif op == CLIENT_DISCONNECT and isinstance(data, dict) and "user_id" in data:
            gone = int(data["user_id"])
            for ssrc in [s for s, user in self.ssrc_users.items() if user == gone]:
                del self.ssrc_users[ssrc]
        elif op == SESSION_DESCRIPTION:
            self.ssrc_users.clear()
            for listener in list(self.session_listeners):
                listener()

    @property
    def connection_lost(self) -> bool:
        """The voice websocket is closed: discord.py is about to reconnect (it waits a little first), so a member
        who went quiet may only have been cut off."""
        ws = self._connection.ws
        if not self.is_connected() or ws is discord.utils.MISSING:
            return True
        return ws.ws.closed or ws.ws.close_code is not None  # a close frame received, not yet handled

    def transport(self) -> tuple[str, bytes]:
        """The negotiated encryption mode and key of the current session."""
        return self._connection.mode, bytes(self._connection.secret_key)

    def dave(self) -> Dave | None:
        """This connection's DAVE session, for opening members' frames; None while DAVE is off (version 0)."""
        state = self._connection
        session = state.dave_session
        if session is None or state.dave_protocol_version == 0:
            return None
        return receiving(session)


def receiving(session: davey.DaveSession) -> Dave:
    """A DAVE session as the receiver uses it: members' audio frames opened with their keys."""
    return Dave(
        decrypt=lambda user_id, frame: session.decrypt(user_id, davey.MediaType.audio, frame),
        can_passthrough=session.can_passthrough,
    )


class ListenEnded(UserFacingError):
    """The listen stopped before the member's question ended (the sentence says why)."""


@dataclass(frozen=True)
class ListenConfig:
    """How long to wait for speech, how utterances are cut, and how many members open mic hears at once."""

    start_seconds: float
    segmenter: SegmenterConfig
    max_members: int


@dataclass
class _Ask:
    future: asyncio.Future[Utterance | None]
    start_deadline: float


class VoiceReceiver:
    """One guild's listening: the members asked to speak (/ask) and, with open mic, everyone else (bounded)."""

    def __init__(
        self,
        client: ListeningVoiceClient,
        config: ListenConfig,
        on_utterance: Callable[[int, Utterance], None],
        reconnected_sentence: str,
    ) -> None:
        self.client = client
        self.config = config
        self._on_utterance = on_utterance  # open mic: an utterance of a member who was not asked
        self._reconnected = reconnected_sentence
        self._loop = asyncio.get_running_loop()
        self._asks: dict[int, _Ask] = {}
        self._streams: dict[int, MemberStream] = {}
        self._open_mic = False
        self._wanted: frozenset[int] | None = frozenset()  # members whose packets are kept (None: all)
        self._ticker: asyncio.Task[None] | None = None
        self.dropped = 0  # packets that could not be read (bad header, key or DAVE frame)
        self._reading = False  # registered on the voice socket (only while anyone is listened to)
        client.session_listeners.append(self._on_new_session)

    @property
    def open_mic(self) -> bool:
        return self._open_mic

    @open_mic.setter
    def open_mic(self, on: bool) -> None:
        self._open_mic = on
        if not on:
            for user_id in [u for u in self._streams if u not in self._asks]:
                del self._streams[user_id]
        self._update()

    def listening_to(self, user_id: int) -> bool:
        """Whether an /ask of this member is waiting for their question."""
        return user_id in self._asks

    @property
    def asks(self) -> int:
        return len(self._asks)

    def listen(self, user_id: int) -> asyncio.Future[Utterance | None]:
        """Start listening to a member: the future is their next utterance, None when they don't start speaking
        within the start time, or `ListenEnded` when the listen is ended first (`end`). Cancel it to give up."""
        future: asyncio.Future[Utterance | None] = self._loop.create_future()
        self._asks[user_id] = _Ask(future, time.monotonic() + self.config.start_seconds)
        self._streams[user_id] = self._new_stream()  # a fresh start: nothing said before the /ask counts
        self._update()
        future.add_done_callback(lambda _: self._forget_ask(user_id, future))
        return future

    def _forget_ask(self, user_id: int, future: asyncio.Future[Utterance | None]) -> None:
        ask = self._asks.get(user_id)
        if ask is not None and ask.future is future:
            del self._asks[user_id]
        if not self._open_mic and user_id not in self._asks:
            self._streams.pop(user_id, None)  # nothing more of theirs is decoded
        self._update()

    def end(self, sentence: str) -> int:
        """End every /ask under way with `sentence` and forget all audio; returns how many there were."""
        asks = list(self._asks.values())
        for ask in asks:
            if not ask.future.done():
                ask.future.set_exception(ListenEnded(sentence))
        self._asks.clear()
        self._streams.clear()
        self._update()
        return len(asks)

    def close(self, sentence: str) -> None:
        """End everything (the socket is no longer read) and stop following the connection."""
        self.end(sentence)
        self._open_mic = False
        self._update()
        with contextlib.suppress(ValueError):
            self.client.session_listeners.remove(self._on_new_session)

    # -- internals -------------------------------------------------------------------------------------
    def _new_stream(self) -> MemberStream:
        return MemberStream(self.config.segmenter, WebRtcVad())

    def _update(self) -> None:
        """Publish who is listened to (read by the socket thread); read the socket and run the ticker only while
        anyone is listened to (with no listener discord.py's reader thread idles)."""
        self._wanted = None if self._open_mic else frozenset(self._asks)
        busy = self._open_mic or bool(self._asks)
        if busy and not self._reading:
            self.client._connection.add_socket_listener(self._on_datagram)
            self._reading = True
        elif not busy and self._reading:
            self.client._connection.remove_socket_listener(self._on_datagram)
            self._reading = False
        if busy and self._ticker is None:
            self._ticker = self._loop.create_task(self._tick(), name=f"listening ticker {id(self):#x}")
        elif not busy and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _on_new_session(self) -> None:
        """A reconnect: new key and SSRCs, and the audio in between is lost: /asks end, open mic goes on."""
        if self._asks:
            log.info("Voice reconnected while listening: %d question(s) ended", len(self._asks))
        self.end(self._reconnected)

    def _on_datagram(self, data: bytes) -> None:
        """On discord.py's socket thread: hand over only the packets of members being listened to."""
        ssrc = peek_ssrc(data)
        user_id = self.client.ssrc_users.get(ssrc) if ssrc is not None else None
        wanted = self._wanted
        if user_id is None or (wanted is not None and user_id not in wanted):
            return
        self._loop.call_soon_threadsafe(self._on_packet, user_id, data)

    def _on_packet(self, user_id: int, data: bytes) -> None:
        stream = self._streams.get(user_id)
        if stream is None:
            if not self._open_mic or len(self._streams) >= self.config.max_members:
                return
            stream = self._streams[user_id] = self._new_stream()
        try:
            header = parse_header(data)
            if header.payload_type != OPUS_PAYLOAD_TYPE:
                return
            mode, key = self.client.transport()
            payload = decrypt_transport(data, header, mode, key)
        except PacketError:
            self.dropped += 1
            return
        opus = open_frame(payload, user_id, self.client.dave())
        if opus is None:
            self.dropped += 1
        for utterance in stream.push(header.sequence, header.timestamp, opus, time.monotonic()):
            self._deliver(user_id, utterance)

    def _deliver(self, user_id: int, utterance: Utterance) -> None:
        if self.client.connection_lost:  # the audio stopped because the connection did: nothing was asked
            self.end(self._reconnected)
            return
        ask = self._asks.get(user_id)
        if ask is not None:
            if not ask.future.done():
                ask.future.set_result(utterance)  # its done callback forgets the ask and the member's stream
        elif self._open_mic:
            self._on_utterance(user_id, utterance)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            for user_id, stream in list(self._streams.items()):
                for utterance in stream.quiet(now):
                    self._deliver(user_id, utterance)
                ask = self._asks.get(user_id)
                if ask is not None and not ask.future.done() and not stream.speaking and now >= ask.start_deadline:
                    ask.future.set_result(None)
                elif ask is None and not stream.speaking:
                    idle = stream.last_packet_at is None or now - stream.last_packet_at > FORGET_SECONDS
                    if idle and user_id in self._streams:
                        del self._streams[user_id]
