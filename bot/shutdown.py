"""Graceful shutdown: the questions in flight, and ending those that can't finish with one sentence.

On SIGTERM the bot sets `MagicBot.closing` (admission refuses new questions with `REFUSAL`), lets the questions
in flight finish for two thirds of SHUTDOWN_SECONDS, then cancels the rest and tells each asker `CANNOT_FINISH`
before it closes voice and the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

REFUSAL = "The Magic 8 Ball is restarting and takes no new questions right now; ask again in a minute."
CANNOT_FINISH = "The Magic 8 Ball had to restart before it could answer; please ask again in a minute."

Fail = Callable[[str], Awaitable[None]]  # tells a question's asker, in one sentence, that it ended


class InFlight:
    """The tasks answering questions, each with the way to tell its asker that it can't finish."""

    def __init__(self) -> None:
        self._questions: dict[asyncio.Task, Fail] = {}

    def __len__(self) -> int:
        return len(self._questions)

    @contextmanager
    def track(self, fail: Fail) -> Iterator[None]:
        """Count the current task as answering a question until the block ends."""
        task = asyncio.current_task()
        assert task is not None
        self._questions[task] = fail
        try:
            yield
        finally:
            self._questions.pop(task, None)

    async def end(self, grace: float, reply_seconds: float) -> int:
        """Wait up to `grace` seconds for the questions to finish, then cancel the others and tell their askers
        `CANNOT_FINISH` (within `reply_seconds`). Returns how many were cut short."""
        if self._questions:
            await asyncio.wait(set(self._questions), timeout=grace)
        left = dict(self._questions)
        for task in left:
            task.cancel()
        if not left:
            return 0
        await asyncio.wait(left, timeout=reply_seconds / 2)
        replies = [asyncio.ensure_future(fail(CANNOT_FINISH)) for fail in left.values()]
        done, pending = await asyncio.wait(replies, timeout=reply_seconds / 2)
        for reply in pending:
            reply.cancel()
        for reply in done:
            if not reply.cancelled() and reply.exception() is not None:
                log.warning("Telling an asker about the shutdown failed: %s", reply.exception())
        return len(left)
