"""GuildStore (SQLite through aiosqlite), presets and admission (cooldowns, per-guild concurrency)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.admission import Admission
from bot.presets import DEFAULT_PRESET, PRESETS, find_preset, search_presets
from bot.store import GuildStore

pytestmark = pytest.mark.timeout(30)


async def test_settings_survive_reopening_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'bot.db'}"
    store = GuildStore(url)
    await store.open()
    assert await store.voice_preset(1) is None
    await store.set_voice_preset(1, "Laura")
    await store.set_voice_preset(2, "Gary")
    await store.set_voice_preset(2, "Jon")
    assert await store.enable_channel(1, 10)
    assert not await store.enable_channel(1, 10)
    assert await store.enable_channel(1, 11)
    assert await store.enable_channel(2, 20)
    assert await store.disable_channel(11)
    assert not await store.disable_channel(11)
    await store.close()

    reopened = GuildStore(url)
    await reopened.open()
    try:
        assert await reopened.voice_preset(1) == "Laura"
        assert await reopened.voice_preset(2) == "Jon"
        assert await reopened.voice_preset(3) is None
        assert reopened.is_listening(10) and reopened.is_listening(20)
        assert not reopened.is_listening(11)
        assert reopened.listening_channels(1) == [10]
        assert reopened.listening_channels(2) == [20]
        await reopened.set_voice_preset(1, None)
        assert await reopened.voice_preset(1) is None
    finally:
        await reopened.close()


async def test_store_must_be_opened() -> None:
    store = GuildStore("sqlite+aiosqlite:///:memory:")
    with pytest.raises(RuntimeError, match="open"):
        await store.voice_preset(1)


def test_presets_cover_the_named_speakers() -> None:
    assert len(PRESETS) == 35 and DEFAULT_PRESET in PRESETS
    for name, preset in PRESETS.items():
        assert preset.name == name and name in preset.description
    assert find_preset("  laura ") is PRESETS["Laura"]
    assert find_preset("Nobody") is None
    assert [p.name for p in search_presets("j")][:4] == ["Jenny", "Jon", "Jordan", "Joy"]
    assert "Naomie" in [p.name for p in search_presets("omi")]
    assert len(search_presets("")) == 25


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
