"""One FIFO of answers to speak per guild, so answers never talk over each other.

A `GuildPlayer` owns a bounded queue and a worker task. For each `Utterance` it obtains a connected voice
client (reconnecting when the connection dropped), streams synthesised chunks into a live source, starts
playback once the source has buffered enough, tells the asker (`on_start`) and waits for the end. The worker
exits after `idle_seconds` without work and calls `on_idle` (the voice cog leaves the channel then).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from audio.ffmpeg import run_ffmpeg_work
from audio.source import StreamingSource
from audio.speech import TTSQueueFull, Voice
from bot.metrics import UNDERRUNS, observe

log = logging.getLogger(__name__)

CHARS_PER_SECOND = 14.0  # rough speaking rate, to estimate an answer's length before it is synthesised
RECONNECT_POLL_SECONDS = 0.1


def estimate_seconds(text: str) -> float:
    """How long `text` takes to say, roughly (sizes pre-roll and wait estimates)."""
    return len(text) / CHARS_PER_SECOND + 0.5


class Outcome(enum.Enum):
    """How an utterance ended."""

    SPOKEN = "spoken"  # played to the end
    TTS_FAILED = "tts_failed"  # synthesis failed (before or after the audio started)
    DROPPED = "dropped"  # the voice connection went away while it played
    NO_VOICE = "no_voice"  # no voice connection when its turn came
    SPEECH_BUSY = "speech_busy"  # the shared speech queue refused it (`Utterance.tts_error` says for how long)
    STOPPED = "stopped"  # cancelled by /stop, /leave or shutdown


class QueueFull(Exception):
    """The guild already has as many answers waiting as it may."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} answers are already waiting to be spoken")
        self.size = size


class PlayerClosed(Exception):
    """The player was closed (/leave, idle timeout, shutdown) before the answer could be queued."""


class VoiceLink(Protocol):
    """What the player needs from `discord.VoiceClient`."""

    def is_connected(self) -> bool: ...
    def play(self, source: Any, *, after: Callable[[Exception | None], Any]) -> None: ...
    def is_playing(self) -> bool: ...
    def stop(self) -> None: ...


Synthesize = Callable[[str, Voice], AsyncIterator[np.ndarray]]


class Players(Protocol):
    """What the answering code needs from the voice cog."""

    def player(self, guild_id: int) -> GuildPlayer | None: ...

    @property
    def answers_queued(self) -> int: ...


@dataclass(eq=False)
class Utterance:
    """An answer waiting to be spoken; `result` resolves to its `Outcome`."""

    text: str
    voice: Voice
    on_start: Callable[[], Awaitable[object]] | None = None
    result: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    asked_at: float = field(default_factory=time.perf_counter)  # when the question came (perf_counter)
    tts_error: BaseException | None = None
    started: bool = False

    def resolve(self, outcome: Outcome) -> None:
        if not self.result.done():
            self.result.set_result(outcome)


class GuildPlayer:
    """Speaks a guild's answers one after the other in its voice channel."""

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[VoiceLink | None]],
        synthesize: Synthesize,
        make_source: Callable[[str], StreamingSource],
        queue_size: int,
        idle_seconds: float,
        on_idle: Callable[[], Awaitable[object]],
    ) -> None:
        self._connect = connect
        self._synthesize = synthesize
        self._make_source = make_source
        self._idle_seconds = idle_seconds
        self._on_idle = on_idle
        self._queue: asyncio.Queue[Utterance] = asyncio.Queue(queue_size)
        self._queued_seconds = 0.0  # estimated speaking time of the queued answers
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[Outcome] | None = None
        self._speaking: Utterance | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Answers waiting, not counting the one being spoken."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        """Whether an answer is being spoken (or prepared for speaking) now."""
        return self._current is not None and not self._current.done()

    @property
    def ahead(self) -> int:
        """Answers a new one would wait for: the queued ones plus the one being spoken."""
        return self.pending + (1 if self.busy else 0)

    @property
    def wait_seconds(self) -> float:
        """Roughly how long until a new answer's turn."""
        current = self._speaking.text if self.busy and self._speaking is not None else ""
        return self._queued_seconds + (estimate_seconds(current) if current else 0.0)

    @property
    def full(self) -> bool:
        return self._queue.full()

    def start(self) -> None:
        """Run the worker (idempotent); the idle countdown starts now."""
        if self._closed:
            raise RuntimeError("player is closed")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="guild-player")

    def submit(
        self,
        text: str,
        voice: Voice,
        on_start: Callable[[], Awaitable[object]] | None = None,
        asked_at: float | None = None,
    ) -> Utterance:
        """Queue an answer; raises `QueueFull` when the guild's queue is full, `PlayerClosed` once closed."""
        if self._closed:
            raise PlayerClosed
        utterance = Utterance(text, voice, on_start)
        if asked_at is not None:
            utterance.asked_at = asked_at
        try:
            self._queue.put_nowait(utterance)
        except asyncio.QueueFull:
            raise QueueFull(self._queue.maxsize) from None
        self._queued_seconds += estimate_seconds(text)
        self.start()
        return utterance

    def stop(self) -> int:
        """Cancel the answer being spoken and clear the queue; returns how many answers were dropped."""
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait().resolve(Outcome.STOPPED)
            dropped += 1
        self._queued_seconds = 0.0
        if self.busy and self._speaking is not None:
            assert self._current is not None
            self._current.cancel()
            self._speaking.resolve(Outcome.STOPPED)
            dropped += 1
        return dropped

    async def close(self) -> None:
        """Stop everything and end the worker."""
        self._closed = True
        self.stop()
        for task in (self._current, self._worker):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                utterance = await asyncio.wait_for(self._queue.get(), self._idle_seconds)
            except asyncio.TimeoutError:
                break
            self._queued_seconds = max(0.0, self._queued_seconds - estimate_seconds(utterance.text))
            self._speaking = utterance
            self._current = task = asyncio.create_task(self._speak(utterance), name="guild-player-speak")
            await asyncio.wait({task})
            if task.cancelled():
                utterance.resolve(Outcome.STOPPED)
            elif task.exception() is not None:
                log.error("Speaking an answer failed", exc_info=task.exception())
                utterance.resolve(Outcome.DROPPED)
            else:
                utterance.resolve(task.result())
        if not self._closed:
            await self._on_idle()

    async def _feed(self, utterance: Utterance, source: StreamingSource) -> None:
        try:
            async for chunk in self._synthesize(utterance.text, utterance.voice):
                await source.afeed(chunk)
        except asyncio.CancelledError:
            source.cancel()
            raise
        except Exception as exc:
            log.warning("Speech synthesis failed: %s", exc)
            utterance.tts_error = exc
            source.fail(exc)
        else:
            source.finish()

    async def _speak(self, utterance: Utterance) -> Outcome:
        link = await self._connect()
        if link is None:
            return Outcome.NO_VOICE
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Exception | None] = loop.create_future()

        def after(error: Exception | None) -> None:  # runs in discord.py's player thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(error))

        # Starting ffmpeg forks a process: never on the event loop.
        source = await run_ffmpeg_work(self._make_source, utterance.text)
        source.on_first_frame = lambda: observe("first_voice_packet", time.perf_counter() - utterance.asked_at)
        feeder = asyncio.create_task(self._feed(utterance, source), name="guild-player-feed")
        playing = False
        try:
            await source.ready()
            if source.end_reason is not None and not source.buffered_frames:
                # Nothing to play: synthesis or encoding failed (or the speech queue refused) before any audio.
                busy = isinstance(utterance.tts_error, TTSQueueFull)
                return Outcome.SPEECH_BUSY if busy else Outcome.TTS_FAILED
            if not link.is_connected():
                return Outcome.DROPPED
            link.play(source, after=after)  # discord.py's player thread reads the first frame at once
            playing = utterance.started = True
            if utterance.on_start is not None:
                try:
                    await utterance.on_start()
                except Exception:
                    log.exception("Announcing a spoken answer failed")
            error = await ended
        finally:
            feeder.cancel()
            source.cancel()
            if not playing:
                await run_ffmpeg_work(source.cleanup)  # discord.py cleans up the sources it played
            elif link.is_playing():
                link.stop()
            UNDERRUNS.inc(source.underruns)
        if utterance.tts_error is not None or (source.end_reason or "").startswith(("error", "ffmpeg")):
            return Outcome.TTS_FAILED
        if error is not None or not link.is_connected():
            log.info("Voice playback was cut off: %s", error or "disconnected")
            return Outcome.DROPPED
        return Outcome.SPOKEN
