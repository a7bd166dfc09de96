"""Who may ask now: per-member cooldowns and a per-guild bound on questions in flight.

This is the first of the bot's back-pressure limits (docs/ARCHITECTURE.md tells the whole story); each refusal is
one sentence with a wait estimate. Cooldowns expire, so members who asked once are forgotten after it. Where a
refusal is public (a reply to a voice message), `already_told` keeps it to one per member per cooldown.
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
        self._told: dict[tuple[int, int], float] = {}  # when a refused member was told why; oldest first too
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
        self._told.pop((guild_id, member_id), None)  # a new cooldown: its first refusal is told again
        self._in_flight[guild_id] = busy + 1
        return None

    def already_told(self, guild_id: int, member_id: int) -> bool:
        """Whether this refused member was already told why within the last cooldown (and not let in since);
        if not, they count as told now. So the first refusal is said with its wait, and posting more during
        the cooldown doesn't make the bot post more."""
        now = self._clock()
        self._expire(now)
        key = (guild_id, member_id)
        if key in self._told:
            return True
        if self.cooldown_seconds > 0:
            self._told[key] = now
        return False

    def release(self, guild_id: int, seconds: float | None = None) -> None:
        """A question of this guild was answered (or failed) after `seconds`, which refine the estimate."""
        if seconds is not None:
            self.typical_seconds += _SMOOTHING * (seconds - self.typical_seconds)
        self._in_flight[guild_id] -= 1
        if not self._in_flight[guild_id]:
            del self._in_flight[guild_id]

    def forget_guild(self, guild_id: int) -> None:
        """Drop the cooldowns of a guild the bot left (questions in flight still release normally)."""
        for stamps in (self._last_ask, self._told):
            for key in [key for key in stamps if key[0] == guild_id]:
                del stamps[key]

    @property
    def tracked_members(self) -> int:
        """Members with a running cooldown, or told why they were refused within the last one."""
        self._expire(self._clock())
        return len(self._last_ask.keys() | self._told.keys())

    def _expire(self, now: float) -> None:
        for stamps in (self._last_ask, self._told):
            while stamps:
                key, stamp = next(iter(stamps.items()))
                if now - stamp < self.cooldown_seconds:
                    break
                del stamps[key]
