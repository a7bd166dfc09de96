"""VoiceReceiver on a stand-in voice connection: who is decoded, bounds, deadlines, DAVE frames, reconnects."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from audio.listen.rtp import DAVE_MARKER, XCHACHA, Dave
from audio.listen.segmenter import SegmenterConfig, Utterance
from bot.voice_receive import ListenConfig, ListenEnded, VoiceReceiver
from tests.emulator.speaker import OPUS_SILENCE, opus_frames, rtp_packet
from tests.fakes.audio_files import speechlike

KEY = os.urandom(32)


class Connection:
    """discord.py's VoiceConnectionState as the receiver uses it: socket listeners."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[bytes], Any]] = []

    def add_socket_listener(self, callback: Callable[[bytes], Any]) -> None:
        self.listeners.append(callback)

    def remove_socket_listener(self, callback: Callable[[bytes], Any]) -> None:
        self.listeners.remove(callback)


class Client:
    """What VoiceReceiver reads of a ListeningVoiceClient."""

    def __init__(self) -> None:
        self.ssrc_users: dict[int, int] = {}
        self.session_listeners: list[Callable[[], None]] = []
        self._connection = Connection()
        self.decrypt: Callable[[int, bytes], bytes] | None = None
        self.decrypted: list[int] = []
        self.connection_lost = False

    def transport(self) -> tuple[str, bytes]:
        return XCHACHA, KEY

    def dave(self) -> Dave | None:
        return Dave(self.decrypt, lambda user_id: False) if self.decrypt is not None else None

    def receive(self, data: bytes) -> None:
        """A datagram on the socket (the reader thread calls the listeners)."""
        for listener in self._connection.listeners:
            listener(data)


def packets(ssrc: int, samples: np.ndarray, transform: Callable[[bytes], bytes] = bytes) -> list[bytes]:
    frames = [*opus_frames(samples), *[OPUS_SILENCE] * 5]
    return [rtp_packet(XCHACHA, KEY, i, i * 960, ssrc, transform(f), i + 1) for i, f in enumerate(frames)]


def question(seconds: float = 1.0) -> np.ndarray:
    gap = np.zeros(9600, np.float32)
    return np.concatenate([gap, speechlike(seconds), gap])


async def settle() -> None:
    """Let the packets handed over from the socket thread run on the loop."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def client() -> Client:
    return Client()


def receiver_on(client: Client, heard: list | None = None, **config: Any) -> VoiceReceiver:
    settings = {"start_seconds": 5.0, "max_members": 8, **config}
    segmenter = SegmenterConfig(silence_seconds=0.3, max_seconds=5.0)
    return VoiceReceiver(
        client,  # type: ignore[arg-type]
        ListenConfig(segmenter=segmenter, **settings),
        on_utterance=lambda user, utterance: (heard if heard is not None else []).append((user, utterance)),
        reconnected_sentence="reconnected",
    )


async def test_only_the_asker_is_decoded_and_the_utterance_comes_back(client: Client) -> None:
    client.ssrc_users = {1: 100, 2: 200}
    receiver = receiver_on(client)
    assert not client._connection.listeners  # nobody is listened to: the socket is not even read
    heard = receiver.listen(100)
    assert len(client._connection.listeners) == 1
    for mine, theirs in zip(packets(1, question()), packets(2, question(2.0)), strict=False):
        client.receive(theirs)
        client.receive(mine)
        await settle()
    assert set(receiver._streams) == {100}  # the other member's packets were dropped unread
    utterance = await asyncio.wait_for(heard, 10)  # the sender went quiet: the ticker ends it
    assert isinstance(utterance, Utterance) and 0.9 <= utterance.seconds <= 1.5
    assert not receiver._streams and not receiver.asks  # nothing more of the asker is decoded either
    await settle()
    assert not client._connection.listeners
    receiver.close("bye")
    assert not client._connection.listeners and not client.session_listeners


async def test_no_speech_within_the_start_time_gives_none(client: Client) -> None:
    client.ssrc_users = {1: 100}
    receiver = receiver_on(client, start_seconds=0.2)
    heard = receiver.listen(100)
    for packet in packets(1, np.zeros(4800, np.float32)):
        client.receive(packet)
    assert await asyncio.wait_for(heard, 10) is None
    receiver.close("bye")


async def test_a_new_voice_session_ends_the_listen_with_its_sentence(client: Client) -> None:
    receiver = receiver_on(client)
    heard = receiver.listen(100)
    for listener in client.session_listeners:
        listener()
    with pytest.raises(ListenEnded, match="reconnected"):
        await heard
    assert receiver.end("again") == 0
    receiver.close("bye")


async def test_audio_that_stops_with_the_connection_is_not_a_question(client: Client) -> None:
    client.ssrc_users = {1: 100}
    receiver = receiver_on(client)
    heard = receiver.listen(100)
    for packet in packets(1, speechlike(1.0))[:30]:  # cut off mid-word
        client.receive(packet)
    await settle()
    client.connection_lost = True  # the voice websocket closed; discord.py reconnects after a pause
    with pytest.raises(ListenEnded, match="reconnected"):
        await asyncio.wait_for(heard, 10)
    receiver.close("bye")


async def test_open_mic_hears_at_most_max_members_and_dave_frames_are_opened(client: Client) -> None:
    client.ssrc_users = {1: 100, 2: 200}
    client.decrypt = lambda user, frame: (client.decrypted.append(user), frame[:-2])[1]
    heard: list = []
    receiver = receiver_on(client, heard, max_members=1)
    receiver.open_mic = True

    def encrypted(frame: bytes) -> bytes:
        return frame + DAVE_MARKER

    for first, second in zip(packets(1, question(), encrypted), packets(2, question(), encrypted), strict=False):
        client.receive(first)
        client.receive(second)
        await settle()
    await asyncio.wait_for(_until(lambda: heard), 10)
    assert [user for user, _ in heard] == [100]  # the second member is beyond the bound
    assert set(client.decrypted) == {100}
    receiver.open_mic = False
    assert not receiver._streams
    receiver.close("bye")


async def _until(predicate: Callable[[], Any]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)
