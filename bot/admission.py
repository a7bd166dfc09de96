"""Who may ask now: per-member cooldowns and a per-guild bound on questions in flight.

This is the first of the bot's back-pressure limits (docs/ARCHITECTURE.md tells the whole story); each refusal is
one sentence with a wait estimate. Cooldowns expire, so members who asked once are forgotten after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

TYPICAL_ANSWER_SECONDS = 10.0  # the estimate before any question was answered
_SMOOTHING = 0.2  # weight of the latest answer in the running estimate of an answer's duration


def seconds_phrase(seconds: float) -> str:
    """`3 seconds`, `1 second`: whole seconds, rounded up, at least one."""
    whole = max(1, math.ceil(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"


class Admission:
    """Per-member cooldowns and a per-guild bound on questions in flight (clock injectable for tests)."""

    def __init__(self, cooldown_seconds: float, per_guild: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_seconds = cooldown_seconds
        self.per_guild = per_guild
        self.typical_seconds = TYPICAL_ANSWER_SECONDS
        self._clock = clock
        self._last_ask: dict[tuple[int, int], float] = {}  # oldest first: expired entries leave from the front
        self._in_flight: dict[int, int] = {}

    def admit(self, guild_id: int, member_id: int) -> str | None:
        """Let a question in (the caller must `release` the guild later), or return why not."""
        now = self._clock()
        self._expire(now)
        busy = self._in_flight.get(guild_id, 0)
        if busy >= self.per_guild:
            what = "a question" if busy == 1 else f"{busy} questions"
            return (
                f"The ball is already pondering {what} in this server; "
                f"ask again in about {seconds_phrase(self.typical_seconds)}."
            )
        last = self._last_ask.get((guild_id, member_id))
        if last is not None:
            return f"Slow down: you can ask again in {seconds_phrase(self.cooldown_seconds - (now - last))}."
        if self.cooldown_seconds > 0:
            self._last_ask[(guild_id, member_id)] = now
        self._in_flight[guild_id] = busy + 1
        return None

    def release(self, guild_id: int, seconds: float | None = None) -> None:
        """A question of this guild was answered (or failed) after `seconds`, which refine the estimate."""
        if seconds is not None:
            self.typical_seconds += _SMOOTHING * (seconds - self.typical_seconds)
        self._in_flight[guild_id] -= 1
        if not self._in_flight[guild_id]:
            del self._in_flight[guild_id]

    def forget_guild(self, guild_id: int) -> None:
        """Drop the cooldowns of a guild the bot left (questions in flight still release normally)."""
        for key in [key for key in self._last_ask if key[0] == guild_id]:
            del self._last_ask[key]

    @property
    def tracked_members(self) -> int:
        """Members with a running cooldown."""
        self._expire(self._clock())
        return len(self._last_ask)

    def _expire(self, now: float) -> None:
        while self._last_ask:
            key, last = next(iter(self._last_ask.items()))
            if now - last < self.cooldown_seconds:
                break
            del self._last_ask[key]
