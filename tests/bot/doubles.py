"""Test doubles for the bot: a sine-wave speech engine and a voice client that drains sources quickly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import discord
import numpy as np

from audio.speech import Voice


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll state the emulator can't see (the bot's, a fake's) until `condition()` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class SineEngine:
    """A `SpeechEngine` that says every text as a 440 Hz tone, `seconds_per_char` long per character.

    A text listed in `fail_at` (or any text, with the key "*") raises after that many chunks (0: before any
    audio). With `hold`, every answer waits for that event after its first `hold_after` chunks.
    """

    max_streams = 1

    def __init__(
        self,
        sample_rate: int = 16_000,
        *,
        seconds_per_char: float = 0.01,
        chunk_seconds: float = 0.25,
        fail_at: dict[str, int] | None = None,
        hold: threading.Event | None = None,
        hold_after: int = 0,
    ) -> None:
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char
        self.chunk_seconds = chunk_seconds
        self.fail_at = fail_at or {}
        self.hold = hold
        self.hold_after = hold_after
        self.spoken: list[tuple[str, Voice]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        self.spoken.append((text, voice))
        total = max(1, round(len(text) * self.seconds_per_char * self.sample_rate))
        step = round(self.chunk_seconds * self.sample_rate)
        for index, start in enumerate(range(0, total, step)):
            if index == self.hold_after and self.hold is not None and not self.hold.wait(30):
                raise RuntimeError("the test never released the held answer")
            if index >= self.fail_at.get(text, self.fail_at.get("*", index + 1)):
                raise RuntimeError("synthetic TTS failure")
            if cancel is not None and cancel.is_set():
                return
            t = np.arange(start, min(start + step, total)) / self.sample_rate
            yield (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class FakeVoiceClient:
    """Plays a source by reading its frames in a thread (1 ms apart instead of 20 ms); can drop the connection.

    Clearing `flowing` holds playback after the current frame until it is set again (or stopped, or dropped).
    """

    def __init__(self) -> None:
        self.connected = True
        self.flowing = threading.Event()
        self.flowing.set()
        self.frames: list[bytes] = []
        self.plays = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.overlapped = False

    def is_connected(self) -> bool:
        return self.connected

    def is_playing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any]) -> None:
        if not self.connected:
            raise discord.ClientException("Not connected to voice.")
        if self.is_playing():
            self.overlapped = True
        self.plays += 1
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set() and self.connected:
                if not self.flowing.wait(0.01):
                    continue
                frame = source.read()
                if not frame:
                    break
                self.frames.append(frame)
                time.sleep(0.001)
            source.cleanup()
            after(None if self.connected else ConnectionError("voice connection lost"))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        """Wait for the playback thread to end."""
        if self._thread is not None:
            self._thread.join(10)

    def drop(self) -> None:
        """The voice connection goes away for good."""
        self.connected = False
