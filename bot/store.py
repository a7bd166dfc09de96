"""Per-guild settings (voice preset, voice-message listening channels) through SQLAlchemy's async engine.

SQLite through aiosqlite by default, or PostgreSQL through asyncpg (`postgresql+asyncpg://...`), which several
bot processes can share. Alembic owns the schema (`bot.migrations`): `open()` upgrades the database first.
Writes are single atomic statements (upserts, conditional inserts and deletes), so processes changing the same
guild at once lose nothing. Listening channels are cached in memory because every posted message is checked
against them; a guild belongs to one process (its shard), which keeps its cache current.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import BigInteger, Boolean, String, delete, false, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot import migrations

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # dialects with INSERT ... ON CONFLICT


class _Base(DeclarativeBase):
    pass


class GuildSettings(_Base):
    """One row per guild that changed a setting."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    voice_preset: Mapped[str | None] = mapped_column(String(64))
    open_mic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ListeningChannel(_Base):
    """A channel whose posted voice messages the bot answers."""

    __tablename__ = "listening_channels"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)


class DatabaseUnavailable(Exception):
    """The database in DATABASE_URL can't be used; the message is one sentence for the operator."""


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (not SQLAlchemy's wrapping with the statement)."""
    if isinstance(exc, ModuleNotFoundError):
        return f"its driver {exc.name} is not installed (for PostgreSQL: pip install -e '.[postgres]')"
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(cause).__name__


def _shown(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "not a database URL"


class GuildStore:
    """Async access to per-guild settings; `open()` before use, `close()` at shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker | None = None
        self._listening: dict[int, int] = {}  # channel id → guild id

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a database failure into `DatabaseUnavailable` naming DATABASE_URL (its password hidden)."""
        try:
            yield
        except (SQLAlchemyError, OSError, ModuleNotFoundError, migrations.MigrationError) as exc:
            message = f"The database in DATABASE_URL ({_shown(self.url)}) can't be used: {_reason(exc)}."
            raise DatabaseUnavailable(message) from exc

    async def connect(self) -> None:
        """Create the engine (and a SQLite file's folder); nothing is read or written yet."""
        with self._errors():
            parsed = make_url(self.url)
            if parsed.get_dialect().name not in _INSERTS:
                raise DatabaseUnavailable(
                    "DATABASE_URL must be a SQLite (sqlite+aiosqlite://) or PostgreSQL (postgresql+asyncpg://) URL."
                )
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_async_engine(self.url)
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    async def upgrade(self) -> str:
        """Migrate the schema to the newest revision; returns it."""
        with self._errors():
            return await migrations.upgrade(self._connected())

    async def revision(self) -> str | None:
        """The schema's revision (None: never migrated)."""
        with self._errors():
            return await migrations.current(self._connected())

    async def open(self) -> None:
        """Connect, upgrade the schema and load the listening channels."""
        try:
            await self.connect()
            await self.upgrade()
            with self._errors():
                async with self._session_factory()() as session:
                    rows = await session.execute(select(ListeningChannel.channel_id, ListeningChannel.guild_id))
                    self._listening = {channel_id: guild_id for channel_id, guild_id in rows}
        except DatabaseUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        """Release the connection pool."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def _connected(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("GuildStore.open() was not awaited")
        return self._engine

    def _session_factory(self) -> async_sessionmaker:
        if self._sessions is None:
            raise RuntimeError("GuildStore.open() was not awaited")
        return self._sessions

    def _insert(self, table: type[_Base]) -> sqlite.Insert | postgresql.Insert:
        """An INSERT with the dialect's ON CONFLICT clauses."""
        return _INSERTS[self._connected().dialect.name](table)

    async def voice_preset(self, guild_id: int) -> str | None:
        """The guild's chosen voice preset name, or None for the default voice."""
        async with self._session_factory()() as session:
            row = await session.get(GuildSettings, guild_id)
            return row.voice_preset if row else None

    async def set_voice_preset(self, guild_id: int, preset: str | None) -> None:
        """Choose the guild's voice preset (None restores the default)."""
        upsert = self._insert(GuildSettings).values(guild_id=guild_id, voice_preset=preset)
        upsert = upsert.on_conflict_do_update(index_elements=["guild_id"], set_={"voice_preset": preset})
        async with self._session_factory().begin() as session:
            await session.execute(upsert)

    async def open_mic(self, guild_id: int) -> bool:
        """Whether members may ask aloud with the wake phrase in the guild's voice channel (off by default)."""
        async with self._session_factory()() as session:
            row = await session.get(GuildSettings, guild_id)
            return bool(row and row.open_mic)

    async def set_open_mic(self, guild_id: int, on: bool) -> None:
        """Turn the guild's open mic on or off."""
        upsert = self._insert(GuildSettings).values(guild_id=guild_id, open_mic=on)
        upsert = upsert.on_conflict_do_update(index_elements=["guild_id"], set_={"open_mic": on})
        async with self._session_factory().begin() as session:
            await session.execute(upsert)

    async def enable_channel(self, guild_id: int, channel_id: int) -> bool:
        """Listen for voice messages in a channel; False if it was already enabled (by any process)."""
        insert = self._insert(ListeningChannel).values(channel_id=channel_id, guild_id=guild_id)
        async with self._session_factory().begin() as session:
            result = await session.execute(insert.on_conflict_do_nothing(index_elements=["channel_id"]))
        self._listening[channel_id] = guild_id
        return result.rowcount == 1

    async def disable_channel(self, channel_id: int) -> bool:
        """Stop listening in a channel; False if it was not enabled (by any process)."""
        async with self._session_factory().begin() as session:
            result = await session.execute(delete(ListeningChannel).where(ListeningChannel.channel_id == channel_id))
        self._listening.pop(channel_id, None)
        return result.rowcount > 0

    def is_listening(self, channel_id: int) -> bool:
        """Whether voice messages posted in this channel are answered (no database round trip)."""
        return channel_id in self._listening

    def listening_channels(self, guild_id: int) -> list[int]:
        """The guild's listening channels, sorted."""
        return sorted(c for c, g in self._listening.items() if g == guild_id)

    async def ping(self) -> bool:
        """Whether the database answers `SELECT 1` now (False when it is closed or unreachable)."""
        if self._engine is None:
            return False
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(1))
        except Exception:  # any failure (network, authentication, a broken file) means it does not answer
            return False
        return True

    async def forget_guild(self, guild_id: int) -> None:
        """Delete everything stored about a guild (the bot was removed from it)."""
        async with self._session_factory().begin() as session:
            await session.execute(delete(GuildSettings).where(GuildSettings.guild_id == guild_id))
            await session.execute(delete(ListeningChannel).where(ListeningChannel.guild_id == guild_id))
        self._listening = {c: g for c, g in self._listening.items() if g != guild_id}

    async def forget_channel(self, channel_id: int) -> None:
        """Delete everything stored about a channel (it was deleted)."""
        await self.disable_channel(channel_id)
