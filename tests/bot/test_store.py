"""GuildStore on SQLite and on a real PostgreSQL server, shared by two processes; presets."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from sqlalchemy import event

from bot.presets import DEFAULT_PRESET, PRESETS, find_preset, search_presets
from bot.store import HEALTH_CACHE_SECONDS, DatabaseUnavailable, GuildStore
from tests.bot.doubles import until
from tests.fakes.postgres import PostgresServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
GUILDS = 30  # guilds whose preset both processes set at once
CONTESTED = 30  # channels both processes enable at once
OWN = 30  # channels of the shared guild that only one process enables


async def test_sqlite_file_in_a_new_folder(tmp_path: Path) -> None:
    store = GuildStore(f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'bot.db'}")
    await store.open()
    await store.set_voice_preset(1, "Laura")
    assert await store.voice_preset(1) == "Laura"
    await store.close()


async def test_settings_survive_reopening_the_same_database(database_url: str) -> None:
    url = database_url
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


async def test_a_corrupt_sqlite_file_is_one_sentence_naming_database_url(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(DatabaseUnavailable) as caught:  # at once: a broken file does not mend itself
        await GuildStore(f"sqlite+aiosqlite:///{path}", connect_seconds=600).open()
    message = str(caught.value)
    assert message.startswith("The database in DATABASE_URL (sqlite+aiosqlite:///")
    assert message.endswith("can't be used: file is not a database.") and "\n" not in message


async def test_an_unreachable_server_is_retried_then_one_sentence_hiding_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql+asyncpg://bot:hunter2secret@127.0.0.1:1/bot"
    with pytest.raises(DatabaseUnavailable) as caught:
        await GuildStore(url, connect_seconds=0.5).open()
    message = str(caught.value)
    assert "DATABASE_URL (postgresql+asyncpg://bot:***@127.0.0.1:" in message
    assert "hunter2secret" not in message and "\n" not in message
    retries = [r.getMessage() for r in caplog.records if r.name == "bot.store"]
    assert retries
    assert all(m.startswith("The database can't be reached yet (") and "Connect call failed" in m for m in retries)


async def test_the_first_query_after_a_database_restart_succeeds(own_postgres_server: PostgresServer) -> None:
    server = own_postgres_server
    await asyncio.to_thread(server.start)
    store = GuildStore(server.url())
    await store.open()
    try:
        await store.set_voice_preset(1, "Laura")  # its connection stays in the pool
        await asyncio.to_thread(server.restart)
        assert await store.voice_preset(1) == "Laura"
        await store.set_voice_preset(1, "Jon")
        assert await store.voice_preset(1) == "Jon"
    finally:
        await store.close()


async def test_start_up_waits_for_a_database_that_starts_late(
    own_postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_postgres_server
    await asyncio.to_thread(server.init)
    store = GuildStore(server.url(), connect_seconds=120)
    opening = asyncio.create_task(store.open())
    try:
        await until(lambda: "can't be reached yet" in caplog.text, 30)
        assert not opening.done()
        await asyncio.to_thread(server.run_server)
        await asyncio.wait_for(opening, 60)
        assert await store.enable_channel(1, 10) and store.is_listening(10)
    finally:
        opening.cancel()
        await store.close()


async def test_health_reads_a_table_once_per_interval_and_a_locked_sqlite_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    now = 0.0
    store = GuildStore(f"sqlite+aiosqlite:///{path}", clock=lambda: now)
    await store.open()
    reads: list[str] = []
    event.listen(
        store._connected().sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: reads.append(statement) if "guild_settings" in statement else None,
    )
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        assert await asyncio.gather(*(store.ping() for _ in range(5))) == [True] * 5
        assert len(reads) == 1  # concurrent checks share one probe
        locker.execute("BEGIN EXCLUSIVE")  # `SELECT 1` still succeeds; reads and writes wait, then fail
        now += HEALTH_CACHE_SECONDS
        assert not await store.ping()
        locker.execute("ROLLBACK")
        assert not await store.ping()  # the last probe's result, until the interval is over
        now += HEALTH_CACHE_SECONDS
        assert await store.ping()
        assert len(reads) == 3
    finally:
        locker.close()
        await store.close()


async def test_other_databases_are_refused_in_one_sentence() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"must be a SQLite .* or PostgreSQL"):
        await GuildStore("mysql+aiomysql://bot:pw@localhost/bot").open()


async def writer(url: str, tag: str) -> None:
    """One bot process's share of `test_two_processes_change_the_same_guild_at_once`: waits for "go" on stdin,
    then writes; prints which contested channels it enabled first."""
    store = GuildStore(url)
    await store.open()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    won = []
    for i in range(max(GUILDS, CONTESTED, OWN)):
        if i < GUILDS:
            await store.set_voice_preset(100 + i, tag)
        if i < CONTESTED and await store.enable_channel(1, 1000 + i):
            won.append(1000 + i)
        if i < OWN:
            await store.enable_channel(1, (2000 if tag == "Laura" else 3000) + i)
    await store.close()
    print(json.dumps(won), flush=True)


async def test_two_processes_change_the_same_guild_at_once(database_url: str) -> None:
    if database_url.startswith("sqlite"):  # one SQLite file is migrated by one process; PostgreSQL locks
        store = GuildStore(database_url)
        await store.open()
        await store.close()
    code = "import asyncio, sys; from tests.bot.test_store import writer; asyncio.run(writer(*sys.argv[1:]))"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, database_url, tag, cwd=ROOT, stdin=-1, stdout=-1, stderr=-1
        )
        for tag in ("Laura", "Jon")
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 45)
        assert line == b"ready\n", (line, await proc.stderr.read() if proc.stderr else b"")
    outputs = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    won = [json.loads(out) for out, _ in outputs]

    store = GuildStore(database_url)
    await store.open()
    try:
        assert sorted(won[0] + won[1]) == [1000 + i for i in range(CONTESTED)]  # each enabled exactly once
        for i in range(GUILDS):
            assert await store.voice_preset(100 + i) in ("Laura", "Jon")
        own = [2000 + i for i in range(OWN)] + [3000 + i for i in range(OWN)]
        assert store.listening_channels(1) == sorted(won[0] + won[1] + own)
    finally:
        await store.close()
