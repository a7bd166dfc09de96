"""Pytest fixtures for the Discord emulator (loaded by tests/conftest.py via ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .server import DiscordEmulator


@pytest.fixture
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[DiscordEmulator]:
    """A started emulator with discord.py's REST base and gateway pointed at it; fails the test if
    the emulator itself raised while handling a request, or a client sent a guild's frame on another shard.
    Voice is on DAVE; parametrize the fixture indirectly with ``False`` for protocol version 0."""
    async with DiscordEmulator(dave=getattr(request, "param", True)) as emu:
        with emu.patch():
            yield emu
    assert not emu.internal_errors, f"the emulator failed internally: {emu.internal_errors!r}"
    assert not emu.gateway.misrouted, f"frames sent on the wrong shard: {emu.gateway.misrouted!r}"
