"""GuildStore (SQLite through aiosqlite) and presets."""

from __future__ import annotations

from pathlib import Path

import pytest

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
