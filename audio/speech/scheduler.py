"""Fair admission of answers to a speech engine, for asyncio code.

Answers wait per key (a guild id) in a bounded queue; whenever the engine has a free stream, the key whose last
turn is the longest ago (keys new to the queue first) starts its oldest answer, with at most `slots_per_key`
answers of one key generating at once. Each running answer iterates the engine's blocking `stream()` on the
scheduler's own thread pool, so speech never competes with other blocking work for asyncio's default executor.
With `max_behind_s` set, an answer whose reader leaves more than that much audio unread is cancelled (its engine
stream stops, freeing its row) and ends with `TTSError`: a reader that stalls never makes the engine wait.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audio.speech.voice import SpeechEngine, TTSError, TTSQueueFull, Voice

_END = object()
_FIRST_GUESS_S = 10.0  # assumed length of one answer's generation until one has been measured


@dataclass(eq=False)
class _Job:
    key: Hashable
    text: str
    voice: Voice
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    chunks: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    max_behind: int | None = None  # samples the reader may leave unread before the answer is cancelled
    unread: int = 0  # samples delivered and not yet read (both threads, under `_lock`)
    overrun: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, item: Any) -> None:
        """Hand a chunk, `_END` or an exception to the consumer (from any thread). Once the reader is more than
        `max_behind` samples behind, the answer is cancelled here, on the producing thread, so the engine stops
        at its next chunk however far the consumer's loop lags, and the reader gets `TTSError`."""
        if self.overrun:
            return
        if isinstance(item, np.ndarray):
            with self._lock:
                self.unread += item.size
                behind = self.unread
            if self.max_behind is not None and behind > self.max_behind:
                self.overrun = True
                self.cancel.set()
                item = TTSError("the reader fell too far behind the speech and the answer was stopped")
        try:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancel.set()

    def read(self, item: np.ndarray) -> None:
        """The reader took `item` (on the consumer's loop)."""
        with self._lock:
            self.unread -= item.size


class SpeechStream(AsyncIterator[np.ndarray]):
    """Chunks of one queued answer. `aclose()` or cancelling the consuming task cancels generation."""

    def __init__(self, job: _Job, scheduler: SpeechScheduler) -> None:
        self._job = job
        self._scheduler = scheduler
        self._finished = False

    async def __anext__(self) -> np.ndarray:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._job.chunks.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if item is _END or isinstance(item, BaseException):
            self._finished = True
            if isinstance(item, BaseException):
                raise item
            raise StopAsyncIteration
        self._job.read(item)
        return item

    async def aclose(self) -> None:
        self._finished = True
        self._job.cancel.set()
        self._scheduler.discard(self._job)


class SpeechScheduler:
    """Runs up to `engine.max_streams` answers at once, round-robin between keys, with bounded queues.

    `queue_size` bounds the answers waiting in total and `queue_per_key` those of one key, so one guild cannot
    fill the queue for everybody; `slots_per_key` bounds one key's answers generating at once; `max_behind_s`
    (None: no bound) the audio an answer's reader may leave unread before the answer is stopped.
    """

    def __init__(
        self,
        engine: SpeechEngine,
        *,
        queue_size: int = 16,
        queue_per_key: int = 4,
        slots_per_key: int = 2,
        max_behind_s: float | None = None,
    ) -> None:
        self._engine = engine
        self._max_behind = None if max_behind_s is None else int(max_behind_s * engine.sample_rate)
        self._queue_size = queue_size
        self._queue_per_key = queue_per_key
        self._slots_per_key = slots_per_key
        self._streams = max(1, engine.max_streams)
        self._waiting: dict[Hashable, deque[_Job]] = {}
        self._running: dict[Hashable, set[_Job]] = {}
        # Keys with waiting or running answers only: the turn order never outgrows the keys in use.
        self._last_turn: dict[Hashable, int] = {}
        self._turns = itertools.count()
        self._seconds_per_answer = _FIRST_GUESS_S
        self._executor = ThreadPoolExecutor(max_workers=self._streams, thread_name_prefix="speech")
        self._closed = False

    @property
    def waiting(self) -> int:
        """Answers queued and not started."""
        return sum(len(jobs) for jobs in self._waiting.values())

    @property
    def running(self) -> int:
        """Answers generating now (engine streams in use)."""
        return sum(len(jobs) for jobs in self._running.values())

    def retry_after(self) -> float:
        """Seconds until a new answer would likely start: the queue ahead of it, spread over the engine's streams."""
        ahead = self.waiting + self.running + 1
        return max(1.0, self._seconds_per_answer * math.ceil(ahead / self._streams))

    def stream(self, key: Hashable, text: str, voice: Voice) -> SpeechStream:
        """Queue an answer for `key`; raises `TTSQueueFull` (with `retry_after`) when a queue bound is reached."""
        if self._closed:
            raise TTSError("the speech scheduler was closed")
        if self.waiting >= self._queue_size or len(self._waiting.get(key, ())) >= self._queue_per_key:
            raise TTSQueueFull.after(self.retry_after())
        job = _Job(key, text, voice, asyncio.get_running_loop(), max_behind=self._max_behind)
        self._waiting.setdefault(key, deque()).append(job)
        self._last_turn.setdefault(key, -1)
        self._dispatch()
        return SpeechStream(job, self)

    def discard(self, job: _Job) -> None:
        """Forget a job that has not started."""
        jobs = self._waiting.get(job.key)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._waiting[job.key]
            self._forget_idle(job.key)

    async def close(self) -> None:
        """Refuse new answers; every waiting or running answer ends with `TTSError`."""
        self._closed = True
        error = TTSError("the speech scheduler was closed")
        for jobs in (*self._waiting.values(), *self._running.values()):
            for job in jobs:
                job.cancel.set()
                job.deliver(error)
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        """Start waiting answers while the engine has free streams."""
        while not self._closed and self.running < self._streams and (job := self._next_job()) is not None:
            self._running.setdefault(job.key, set()).add(job)
            started = time.monotonic()
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._play, job)
            future.add_done_callback(lambda _, job=job, started=started: self._finished(job, started))

    def _next_job(self) -> _Job | None:
        """The oldest job of the eligible key whose last turn is the longest ago."""
        eligible = [k for k in self._waiting if len(self._running.get(k, ())) < self._slots_per_key]
        if not eligible:
            return None
        key = min(eligible, key=self._last_turn.__getitem__)
        self._last_turn[key] = next(self._turns)
        jobs = self._waiting[key]
        job = jobs.popleft()
        if not jobs:
            del self._waiting[key]
        return job

    def _finished(self, job: _Job, started: float) -> None:
        """Free the job's stream, learn how long answers take, and start the next answer."""
        running = self._running.get(job.key)
        if running is not None:
            running.discard(job)
            if not running:
                del self._running[job.key]
        if not job.cancel.is_set():
            self._seconds_per_answer = 0.8 * self._seconds_per_answer + 0.2 * (time.monotonic() - started)
        self._forget_idle(job.key)
        self._dispatch()

    def _forget_idle(self, key: Hashable) -> None:
        if key not in self._waiting and key not in self._running:
            self._last_turn.pop(key, None)

    def _play(self, job: _Job) -> None:
        """Worker thread: run one answer on the engine and forward its chunks."""
        if job.cancel.is_set():
            return
        try:
            for chunk in self._engine.stream(job.text, job.voice, job.cancel):
                job.deliver(chunk)
        except (TTSError, TTSQueueFull) as exc:  # a remote server's queue can be full too
            job.deliver(exc)
        except BaseException as exc:  # whatever ends the engine's stream, the consumer hears of it
            error = TTSError(f"speech generation failed: {exc}")
            error.__cause__ = exc
            job.deliver(error)
        else:
            job.deliver(_END)
