"""Far-end members who talk: Opus from a recording, DAVE, RTP under transport encryption, SPEAKING (op 5) to the bot.

A `FarEndSpeaker` sends from the emulator's UDP socket of the bot's voice connection to the address the bot
selected, as Discord relays other members' audio. On a DAVE call each Opus frame is first encrypted with the
member's own MLS session (`FarEndMember.session.encrypt_opus`, once its group is ready), as their client would;
on protocol version 0, or before the group forms, frames travel as plain Opus. `encrypt` overrides that.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np

from .dave import FarEndMember
from .voice import SAMPLES_PER_FRAME, VoiceConnectionRecord, VoiceServer, _encrypt

SAMPLE_RATE = 48_000
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE
OPUS_SILENCE = b"\xf8\xff\xfe"
# The one-byte header extension Discord clients send (profile 0xBEDE, one word: an audio-level element).
HEADER_EXTENSION = struct.pack(">HH", 0xBEDE, 1) + bytes([0x10, 0x7F, 0, 0])


def opus_frames(samples: np.ndarray) -> list[bytes]:
    """Float mono samples at 48 kHz → 20 ms stereo Opus frames (libopus, 64 kbit/s), as a Discord client sends."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = SAMPLE_RATE, "stereo", "s16", 64_000
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % SAMPLES_PER_FRAME, np.int16)])
    frames: list[bytes] = []
    for start in range(0, len(pcm), SAMPLES_PER_FRAME):
        chunk = np.repeat(pcm[start : start + SAMPLES_PER_FRAME], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frames += [bytes(p) for p in encoder.encode(frame)]
    frames += [bytes(p) for p in encoder.encode(None)]
    return frames


def rtp_packet(mode: str, key: bytes, sequence: int, timestamp: int, ssrc: int, payload: bytes, counter: int) -> bytes:
    """One RTP packet with the client header extension, encrypted with an ``*_rtpsize`` mode and key."""
    header = struct.pack(">BBHII", 0x90, 0x78, sequence % 65536, timestamp % 2**32, ssrc) + HEADER_EXTENSION[:4]
    nonce = struct.pack(">I", counter)
    plain = HEADER_EXTENSION[4:] + payload
    return header + _encrypt(mode, key, header, plain, nonce) + nonce


@dataclass
class Impairment:
    """Network trouble on the way to the bot: a share of packets lost, and of neighbours swapped."""

    loss: float = 0.0
    reorder: float = 0.0
    seed: int = 0


@dataclass
class FarEndSpeaker:
    """A member in the bot's voice channel who speaks recordings to the bot."""

    server: VoiceServer
    guild_id: int
    user_id: int
    encrypt: Callable[[bytes], bytes] | None = None  # instead of the member's DAVE session
    ssrc: int = field(default_factory=lambda: secrets.randbits(31) + 1)
    sent: int = 0  # packets put on the wire
    _sequence: int = field(default_factory=lambda: secrets.randbits(16))
    _timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    _counter: int = 0

    def _connection(self) -> VoiceConnectionRecord:
        connection = self.server.record(self.guild_id).connection
        if connection is None or not connection.open or connection.client_address is None:
            raise RuntimeError(f"the bot has no voice connection in guild {self.guild_id}")
        return connection

    async def announce(self, speaking: bool = True) -> None:
        """SPEAKING (op 5) for this member to the bot: how it learns which SSRC is whose."""
        payload = {"user_id": str(self.user_id), "ssrc": self.ssrc, "speaking": int(speaking)}
        self._connection().post_json(5, payload)

    def _dave(self) -> Callable[[bytes], bytes] | None:
        """How this member's client encrypts a frame end to end now (None: it sends plain Opus)."""
        if self.encrypt is not None:
            return self.encrypt
        call = self.server.calls.get(self._connection().channel_id)
        member = call.participants.get(self.user_id) if call is not None else None
        session = member.session if isinstance(member, FarEndMember) else None
        if call is None or call.protocol_version == 0 or session is None or not session.ready:
            return None
        return session.encrypt_opus

    async def speak(
        self, samples: np.ndarray, *, speed: float = 1.0, impairment: Impairment | None = None, leave_gap: bool = True
    ) -> float:
        """Say `samples` (float mono, 48 kHz): SPEAKING, then 20 ms frames on an absolute schedule (`speed`
        times real time), five silence frames, and (`leave_gap`) a timestamp gap as clients leave when quiet.
        Returns when (`time.monotonic()`) the last frame of `samples` was sent."""
        await self.announce()
        audio = opus_frames(samples)
        frames = [*audio, *[OPUS_SILENCE] * 5]
        packets = [self._next_packet(frame) for frame in frames]
        if leave_gap:
            self._timestamp += 50 * SAMPLES_PER_FRAME  # a second of not sending
        rng = random.Random((impairment or Impairment()).seed)
        if impairment is not None:
            packets = [p for p in packets if rng.random() >= impairment.loss]
            for index in range(len(packets) - 1):
                if rng.random() < impairment.reorder:
                    packets[index], packets[index + 1] = packets[index + 1], packets[index]
        start = time.monotonic()
        ended = start
        for index, packet in enumerate(packets):
            delay = start + index * FRAME_SECONDS / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the sender like a client's 20 ms clock, not waiting on the bot
            self._send(packet)
            if index < len(audio):
                ended = time.monotonic()
        return ended

    def _next_packet(self, frame: bytes) -> bytes:
        encrypt = self._dave()
        payload = encrypt(frame) if encrypt is not None and frame != OPUS_SILENCE else frame
        connection = self._connection()
        assert connection.mode is not None and connection.secret_key is not None
        self._counter += 1
        packet = rtp_packet(
            connection.mode, connection.secret_key, self._sequence, self._timestamp, self.ssrc, payload, self._counter
        )
        self._sequence += 1
        self._timestamp += SAMPLES_PER_FRAME
        return packet

    def _send(self, packet: bytes) -> None:
        connection = self._connection()
        assert connection.transport is not None and connection.client_address is not None
        connection.transport.sendto(packet, connection.client_address)
        self.sent += 1
