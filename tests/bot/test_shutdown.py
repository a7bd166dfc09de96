"""InFlight: a graceful shutdown waits for the questions in flight, then cuts the rest short with one sentence."""

from __future__ import annotations

import asyncio

import pytest

from bot.shutdown import CANNOT_FINISH, InFlight

pytestmark = pytest.mark.timeout(30)


async def test_questions_that_cannot_finish_are_cancelled_and_told_once() -> None:
    in_flight = InFlight()
    told: list[tuple[str, str]] = []
    started = {name: asyncio.Event() for name in ("late", "stuck", "unreachable")}
    finish = asyncio.Event()

    async def question(name: str, until: asyncio.Event) -> None:
        async def fail(sentence: str) -> None:
            told.append((name, sentence))
            if name == "unreachable":
                raise ConnectionResetError("the asker's channel is gone")

        with in_flight.track(fail):
            started[name].set()
            await until.wait()

    late = asyncio.create_task(question("late", finish))
    stuck = asyncio.create_task(question("stuck", asyncio.Event()))
    unreachable = asyncio.create_task(question("unreachable", asyncio.Event()))
    for event in started.values():
        await asyncio.wait_for(event.wait(), 10)
    assert len(in_flight) == 3

    ending = asyncio.create_task(in_flight.end(grace=2, reply_seconds=10))
    await asyncio.sleep(0)  # the shutdown is waiting; now one question finishes within its grace
    finish.set()
    assert await ending == 2
    assert late.done() and not late.cancelled()
    assert stuck.cancelled() and unreachable.cancelled()
    assert sorted(told) == [("stuck", CANNOT_FINISH), ("unreachable", CANNOT_FINISH)]
    assert len(in_flight) == 0
    assert await in_flight.end(grace=0.05, reply_seconds=10) == 0
