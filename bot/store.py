"""Per-guild settings (voice preset, voice-message listening channels) through SQLAlchemy's async engine.

SQLite through aiosqlite by default, or PostgreSQL through asyncpg (`postgresql+asyncpg://...`), which several
bot processes can share. Alembic owns the schema (`bot.migrations`): `open()` upgrades the database first.
Writes are single atomic statements (upserts, conditional inserts and deletes), so processes changing the same
guild at once lose nothing. Listening channels are cached in memory because every posted message is checked
against them; a guild belongs to one process (its shard), which keeps its cache current.

PostgreSQL connections are checked before each use (`pool_pre_ping`), so the first query after a database restart
gets a new connection instead of failing; at start-up, `open()` waits up to DATABASE_CONNECT_SECONDS for a server
that is still starting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import BigInteger, Boolean, String, delete, false, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot import migrations

log = logging.getLogger(__name__)

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # dialects with INSERT ... ON CONFLICT
CONNECT_TIMEOUT = 10.0  # seconds one attempt to connect to PostgreSQL may take
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)  # backoff between start-up attempts; the last one repeats
HEALTH_TIMEOUT = 5.0  # seconds a health probe waits for the database
HEALTH_CACHE_SECONDS = 5.0  # how long a probe's result answers health checks
# SQLSTATEs of failures that pass by themselves: connection exceptions (class 08), "the database system is
# starting up / shutting down" (57P03).
_TRANSIENT_STATES = ("08", "57P03")


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


def _transient(exc: BaseException) -> bool:
    """Whether a failure to reach the database may pass by itself (the server is starting, restarting or not
    reachable yet), as opposed to a wrong URL, password or file."""
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, (OSError, asyncio.TimeoutError)):
            return True
        state = getattr(exc.orig, "sqlstate", None) or ""
        return state.startswith(_TRANSIENT_STATES)
    return False


def _shown(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "not a database URL"


class GuildStore:
    """Async access to per-guild settings; `open()` before use, `close()` at shutdown.

    `connect_seconds` (DATABASE_CONNECT_SECONDS) is how long `open()` keeps retrying a database that can't be
    reached yet; `clock` (injectable for tests) times the cached health probe.
    """

    def __init__(self, url: str, *, connect_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.connect_seconds = connect_seconds
        self._clock = clock
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker | None = None
        self._listening: dict[int, int] = {}  # channel id → guild id
        self._probe = asyncio.Lock()  # one health probe at a time
        self._health: tuple[float, bool] | None = None  # when the last probe ended, and its result

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a database failure into `DatabaseUnavailable` naming DATABASE_URL (its password hidden)."""
        try:
            yield
        except (SQLAlchemyError, OSError, asyncio.TimeoutError, ModuleNotFoundError, migrations.MigrationError) as exc:
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
            # A server's connections can die under the pool (a restart): check each before use, and bound connecting.
            server = {"pool_pre_ping": True, "connect_args": {"timeout": CONNECT_TIMEOUT}}
            self._engine = create_async_engine(
                self.url, **(server if parsed.get_backend_name() == "postgresql" else {})
            )
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    async def upgrade(self) -> str:
        """Migrate the schema to the newest revision; returns it."""
        with self._errors():
            return await migrations.upgrade(self._connected())

    async def revision(self) -> str | None:
        """The schema's revision (None: never migrated)."""
        with self._errors():
            return await migrations.current(self._connected())

    async def wait_until_reachable(self) -> None:
        """Connect once, retrying failures that may pass by themselves (a server still starting) with backoff for
        up to `connect_seconds`; then the last failure is `DatabaseUnavailable`."""
        deadline = time.monotonic() + self.connect_seconds
        for attempt in itertools.count():
            try:
                async with self._connected().connect() as connection:
                    await connection.execute(select(1))
                return
            except (SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
                left = deadline - time.monotonic()
                if not _transient(exc) or left <= 0:
                    with self._errors():
                        raise
                delay = min(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)], left)
                log.warning("The database can't be reached yet (%s); trying again for up to %.1f s", _reason(exc), left)
                await asyncio.sleep(delay)

    async def open(self) -> None:
        """Connect (waiting up to `connect_seconds` for the server), upgrade the schema and load the listening
        channels."""
        try:
            await self.connect()
            await self.wait_until_reachable()
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
        self._health = None

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
        """Whether the database answers a read of a table (False when it is closed, unreachable, locked or slower
        than HEALTH_TIMEOUT). One probe runs at a time and its result stands for HEALTH_CACHE_SECONDS, so health
        checks hold at most one pooled connection, however often they come."""
        engine = self._engine
        if engine is None:
            return False
        async with self._probe:
            if self._health is not None and self._clock() - self._health[0] < HEALTH_CACHE_SECONDS:
                return self._health[1]
            try:
                await asyncio.wait_for(self._read_a_table(engine), HEALTH_TIMEOUT)
            except Exception:  # any failure (network, authentication, a lock, a broken file): it does not answer
                healthy = False
            else:
                healthy = True
            self._health = (self._clock(), healthy)
            return healthy

    @staticmethod
    async def _read_a_table(engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            await conn.execute(select(GuildSettings.guild_id).limit(1))

    async def forget_guild(self, guild_id: int) -> None:
        """Delete everything stored about a guild (the bot was removed from it)."""
        async with self._session_factory().begin() as session:
            await session.execute(delete(GuildSettings).where(GuildSettings.guild_id == guild_id))
            await session.execute(delete(ListeningChannel).where(ListeningChannel.guild_id == guild_id))
        self._listening = {c: g for c, g in self._listening.items() if g != guild_id}

    async def forget_channel(self, channel_id: int) -> None:
        """Delete everything stored about a channel (it was deleted)."""
        await self.disable_channel(channel_id)
