"""Per-guild settings (voice preset, voice-message listening channels) through SQLAlchemy's async engine.

SQLite through aiosqlite by default; any async SQLAlchemy URL (e.g. `postgresql+asyncpg://...`) works. Tables
are created on first start and never dropped, so settings survive restarts. Listening channels are cached in
memory because every posted message is checked against them.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, String, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class _Base(DeclarativeBase):
    pass


class GuildSettings(_Base):
    """One row per guild that changed a setting."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    voice_preset: Mapped[str | None] = mapped_column(String(64))


class ListeningChannel(_Base):
    """A channel whose posted voice messages the bot answers."""

    __tablename__ = "listening_channels"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)


class GuildStore:
    """Async access to per-guild settings; `open()` before use, `close()` at shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker | None = None
        self._listening: dict[int, int] = {}  # channel id → guild id

    async def open(self) -> None:
        """Connect, create missing tables and load the listening channels."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_async_engine(self.url)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        async with self._engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
        async with self._sessions() as session:
            rows = await session.execute(select(ListeningChannel.channel_id, ListeningChannel.guild_id))
            self._listening = {channel_id: guild_id for channel_id, guild_id in rows}

    async def close(self) -> None:
        """Release the connection pool."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def _session_factory(self) -> async_sessionmaker:
        if self._sessions is None:
            raise RuntimeError("GuildStore.open() was not awaited")
        return self._sessions

    async def voice_preset(self, guild_id: int) -> str | None:
        """The guild's chosen voice preset name, or None for the default voice."""
        async with self._session_factory()() as session:
            row = await session.get(GuildSettings, guild_id)
            return row.voice_preset if row else None

    async def set_voice_preset(self, guild_id: int, preset: str | None) -> None:
        """Choose the guild's voice preset (None restores the default)."""
        async with self._session_factory().begin() as session:
            await session.merge(GuildSettings(guild_id=guild_id, voice_preset=preset))

    async def enable_channel(self, guild_id: int, channel_id: int) -> bool:
        """Listen for voice messages in a channel; False if it was already enabled."""
        if channel_id in self._listening:
            return False
        async with self._session_factory().begin() as session:
            await session.merge(ListeningChannel(channel_id=channel_id, guild_id=guild_id))
        self._listening[channel_id] = guild_id
        return True

    async def disable_channel(self, channel_id: int) -> bool:
        """Stop listening in a channel; False if it was not enabled."""
        if channel_id not in self._listening:
            return False
        async with self._session_factory().begin() as session:
            await session.execute(delete(ListeningChannel).where(ListeningChannel.channel_id == channel_id))
        del self._listening[channel_id]
        return True

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
