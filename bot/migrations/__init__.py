"""Alembic owns the store's schema; the bot runs it programmatically (no alembic.ini) on its async engine.

`upgrade` brings a database to the newest revision (the bot does it at start-up, `python -m bot db upgrade`
on demand); `current` reads its revision without changing anything (`python -m bot db current`).

A database the bot created before it had migrations has the first revision's tables and no `alembic_version`
table. It is recognised by its tables and their columns (`RELEASED_TABLES`): when they match exactly, it is
stamped at the first revision, then upgraded; when only some match, nothing is changed and the upgrade fails.
Several bot processes may start at once against one PostgreSQL database: the upgrade holds an advisory lock
for its transaction, so they migrate one after the other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

FIRST_REVISION = "0001"
# The tables (and their columns) that the bot created with `create_all` before it had migrations: revision 0001.
RELEASED_TABLES = {"guild_settings": {"guild_id", "voice_preset"}, "listening_channels": {"channel_id", "guild_id"}}
_LOCK_KEY = 0x8BA11  # pg_advisory_xact_lock key held while migrating


class MigrationError(Exception):
    """The database can't be brought to the newest revision; the message says why, in a few words."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this version of the bot knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _released_schema(connection: Connection) -> bool:
    """Whether an un-versioned database holds the tables of the first revision (False: none of them)."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names()) & RELEASED_TABLES.keys()
    if not present:
        return False
    columns = {name: {c["name"] for c in inspector.get_columns(name)} for name in present}
    if columns != RELEASED_TABLES:
        raise MigrationError(
            "it has some of the bot's tables but no alembic_version table, and they don't match the bot's first "
            "schema, so it was left unchanged"
        )
    return True


def _upgrade(connection: Connection) -> str:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    config = _config(connection)
    current = _current(connection)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        raise MigrationError(f"it is at revision {current}, which this version of the bot doesn't know")
    if current is None and _released_schema(connection):
        command.stamp(config, FIRST_REVISION)
    command.upgrade(config, "head")
    revision = _current(connection)
    assert revision is not None
    return revision


async def upgrade(engine: AsyncEngine) -> str:
    """Bring the database to the newest revision in one transaction; returns that revision."""
    async with engine.begin() as connection:
        return await connection.run_sync(_upgrade)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
