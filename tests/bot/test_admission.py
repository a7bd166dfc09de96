"""Admission: per-member cooldowns (which expire), per-guild questions in flight, wait estimates."""

from __future__ import annotations

import re

from bot.admission import Admission


def test_cooldown_names_the_remaining_time() -> None:
    admission = Admission(cooldown_seconds=60, per_guild=5)
    assert admission.admit(1, 100) is None
    admission.release(1)
    refusal = admission.admit(1, 100)
    assert refusal is not None
    match = re.search(r"again in (\d+) seconds", refusal)
    assert match and 1 <= int(match.group(1)) <= 60
    assert admission.admit(1, 101) is None  # other members are not held back
    assert admission.admit(2, 100) is None  # nor the same member in another guild


def test_concurrency_bound_is_per_guild() -> None:
    admission = Admission(cooldown_seconds=0, per_guild=2)
    assert admission.admit(1, 100) is None
    assert admission.admit(1, 101) is None
    refusal = admission.admit(1, 102)
    assert refusal is not None and "pondering 2 questions" in refusal
    assert admission.admit(2, 102) is None
    admission.release(1)
    assert admission.admit(1, 102) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cooldowns_expire_so_members_are_forgotten() -> None:
    clock = Clock()
    admission = Admission(cooldown_seconds=10, per_guild=1, clock=clock)
    for member in range(20_000):
        assert admission.admit(member % 7, member) is None
        admission.release(member % 7)
    assert admission.tracked_members == 20_000
    clock.now += 10
    assert admission.admit(1, 1) is None  # asking again after the cooldown is fine
    assert admission.tracked_members == 1  # and everyone else was forgotten
    admission.release(1)
    assert admission.admit(1, 1) is not None


def test_forgetting_a_guild_drops_its_cooldowns_only() -> None:
    admission = Admission(cooldown_seconds=60, per_guild=5)
    assert admission.admit(1, 100) is None and admission.admit(2, 100) is None
    admission.forget_guild(1)
    assert admission.tracked_members == 1
    assert admission.admit(2, 100) is not None


def test_a_busy_guild_is_told_a_wait_learned_from_answers() -> None:
    admission = Admission(cooldown_seconds=0, per_guild=1)
    assert admission.admit(1, 100) is None
    for _ in range(30):
        admission.release(1, seconds=2.0)
        assert admission.admit(1, 100) is None
    refusal = admission.admit(1, 101)
    assert refusal == "The ball is already pondering a question in this server; ask again in about 3 seconds."


def test_a_refused_member_is_told_once_per_cooldown() -> None:
    clock = Clock()
    admission = Admission(cooldown_seconds=10, per_guild=5, clock=clock)
    assert admission.admit(1, 100) is None
    assert admission.admit(1, 100) is not None
    assert not admission.already_told(1, 100)  # the first refusal is said
    clock.now += 5
    assert admission.already_told(1, 100) and admission.already_told(1, 100)  # the rest are not
    assert not admission.already_told(1, 101) and not admission.already_told(2, 100)  # others are told
    clock.now += 5
    assert admission.admit(1, 100) is None  # the cooldown is over: a new one starts
    clock.now += 1
    assert not admission.already_told(1, 100)  # and its first refusal is said again
    admission.forget_guild(1)
    assert admission.tracked_members == 1  # guild 2's member only
    clock.now += 10
    assert admission.tracked_members == 0
