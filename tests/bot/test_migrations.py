"""Alembic migrations (bot.migrations) on SQLite and PostgreSQL: the first revision is the released schema, a
database the released bot left behind is stamped and upgraded without losing a row, `python -m bot db ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.migrations import head
from bot.settings import Settings
from bot.store import DatabaseUnavailable, GuildStore, _Base

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def raw_database(url: str, *, migrated: bool = False) -> AsyncIterator[AsyncEngine]:
    """A plain SQLAlchemy engine on `url`, after the store has migrated the database when `migrated`."""
    if migrated:
        store = GuildStore(url)
        await store.open()
        await store.close()
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_the_migrations_build_exactly_the_models(database_url: str) -> None:
    async with raw_database(database_url, migrated=True) as engine, engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), _Base.metadata)
        )
    assert differences == []


async def test_a_released_database_is_stamped_and_upgraded_without_losing_a_row(database_url: str) -> None:
    # What the released bot did: create_all of its models as they were then, then settings.
    released = MetaData()
    settings = Table(
        "guild_settings",
        released,
        Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
        Column("voice_preset", String(64)),
    )
    channels = Table(
        "listening_channels",
        released,
        Column("channel_id", BigInteger, primary_key=True, autoincrement=False),
        Column("guild_id", BigInteger, index=True),
    )
    async with raw_database(database_url) as engine, engine.begin() as connection:
        await connection.run_sync(released.create_all)
        await connection.execute(
            insert(settings), [{"guild_id": 1, "voice_preset": "Laura"}, {"guild_id": 2, "voice_preset": None}]
        )
        await connection.execute(
            insert(channels), [{"channel_id": 10, "guild_id": 1}, {"channel_id": 20, "guild_id": 2}]
        )
    store = GuildStore(database_url)
    await store.connect()
    assert await store.revision() is None
    await store.close()

    store = GuildStore(database_url)
    await store.open()
    try:
        assert await store.revision() == head()
        assert await store.voice_preset(1) == "Laura" and await store.voice_preset(2) is None
        assert store.listening_channels(1) == [10] and store.listening_channels(2) == [20]
        assert not await store.open_mic(1)  # the new column's default
        await store.set_voice_preset(3, "Jon")
        assert await store.voice_preset(3) == "Jon"
    finally:
        await store.close()


async def test_foreign_tables_of_the_same_names_are_left_alone(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    other = MetaData()
    Table("guild_settings", other, Column("id", Integer, primary_key=True), Column("colour", Integer))
    async with raw_database(url) as engine:
        async with engine.begin() as connection:
            await connection.run_sync(other.create_all)
            await connection.execute(text("INSERT INTO guild_settings (id, colour) VALUES (1, 7)"))
        with pytest.raises(DatabaseUnavailable, match="don't match the bot's first schema, so it was left unchanged"):
            await GuildStore(url).open()
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT id, colour FROM guild_settings"))).all() == [(1, 7)]
            tables = await connection.run_sync(lambda sync: sync.dialect.get_table_names(sync))
            assert sorted(tables) == ["guild_settings"]


async def test_a_revision_from_a_newer_bot_is_one_sentence(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    async with raw_database(url, migrated=True) as engine, engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(DatabaseUnavailable, match="at revision f00d, which this version of the bot doesn't know"):
        await GuildStore(url).open()


def db_command(action: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "bot", "db", action],
        env={**clean, "PYTHONPATH": str(ROOT), "DATABASE_URL": url, "DATABASE_CONNECT_SECONDS": "0.3"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_commands_for_operators(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    before = db_command("current", url, tmp_path)
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("No revision yet")
    upgraded = db_command("upgrade", url, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == f"Revision {head()} (the newest).\n"
    assert db_command("current", url, tmp_path).stdout == upgraded.stdout

    broken = db_command("upgrade", "postgresql+asyncpg://bot:pg_secret@127.0.0.1:1/bot", tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "pg_secret" not in broken.stderr
    *retries, error = broken.stderr.splitlines()  # it waited DATABASE_CONNECT_SECONDS for the server
    assert retries and all("The database can't be reached yet" in line for line in retries)
    assert error.startswith("error: The database in DATABASE_URL (postgresql+asyncpg://bot:***@127.0.0.1:1")
