"""The bot as its own process on PostgreSQL: settings persist, and SIGTERM stops it gracefully (exit 0) while an
answer is in flight: new questions are refused, the one in flight ends with one sentence, voice is left. The exit
is bounded while the voice loads, and a second SIGTERM ends the process at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.shutdown import CANNOT_FINISH, REFUSAL
from bot.store import GuildStore
from tests.bot.doubles import until
from tests.bot.helpers import Scene, answered
from tests.fakes.bot_process import ROOT, spawn
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)

SHUTDOWN_SECONDS = 9


async def test_sigterm_mid_answer_on_postgresql(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, postgres_url: str
) -> None:
    env = {
        "DATABASE_URL": postgres_url,
        "LLM_BASE_URL": f"{fake_inference.url}/llm",
        "SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
    }
    async with spawn(scene.emu, tmp_path, env) as process:
        await scene.emu.wait_for(lambda: scene.emu.command_syncs, 60, "the bot process to sync its commands")
        chosen = await scene.command("voice set", {"preset": "Laura"}, user=scene.mod)
        await chosen.wait_for(lambda r: r.callback or r.edits, 30)

        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)
        joined = await scene.command("join")
        await joined.wait_for(lambda r: r.edits, 30)
        assert joined.edits[-1].body["content"].startswith("🔊 Joined")

        fake_inference.slow(2 * SHUTDOWN_SECONDS)  # the oracle answers only after the bot has gone
        pending = await scene.ask("Will the restart go well?")
        await scene.emu.wait_for(lambda: fake_inference.requests, 30, "the question to reach the oracle")

        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        while b"Shutting down" not in (line := await asyncio.wait_for(process.stderr.readline(), 30)):
            assert line, "the bot exited without shutting down"
        refused = await scene.ask("And another one?")
        reply = await refused.wait_for_response(30)
        assert reply.data["content"] == REFUSAL and refused.ephemeral

        await pending.wait_for(lambda r: r.followups, 30)
        assert [f.data["content"] for f in pending.followups] == [CANNOT_FINISH]
        stderr = await asyncio.wait_for(process.stderr.read(), 60)
        assert await asyncio.wait_for(process.wait(), 30) == 0, stderr.decode()
        assert b"Traceback" not in stderr, stderr.decode()

    assert scene.emu.voice_requests[-1].channel_id is None  # it left voice itself
    assert scene.emu.bot.id not in scene.guild.voice_states
    store = GuildStore(postgres_url)
    await store.open()
    try:
        assert await store.voice_preset(scene.guild.id) == "Laura"
    finally:
        await store.close()


@asynccontextmanager
async def hung_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP server that accepts connections and never answers; yields its URL and an event set at the first."""
    connected = asyncio.Event()
    hold = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connected
    finally:
        hold.set()
        server.close()


async def test_the_exit_is_bounded_while_the_voice_loads(scene: Scene, tmp_path: Path) -> None:
    async with hung_server() as (url, connected):
        # The loader waits on the hung server for TTS_TIMEOUT, far longer than the test waits for the exit.
        env = {"TTS_ENABLED": "true", "TTS_BASE_URL": url, "TTS_TIMEOUT": "3600", "SHUTDOWN_SECONDS": "3"}
        async with spawn(scene.emu, tmp_path, env) as process:
            await scene.emu.wait_for(lambda: scene.emu.command_syncs, 60, "the bot process to sync its commands")
            await asyncio.wait_for(connected.wait(), 30)  # the voice is loading
            record = await scene.ask("Are you there?")
            await record.wait_for(answered, 30)  # connected to the gateway: only the voice is still loading
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            stderr = await asyncio.wait_for(process.stderr.read(), 60)
            assert await asyncio.wait_for(process.wait(), 60) == 0, stderr.decode()
            assert b"Traceback" not in stderr, stderr.decode()


async def test_a_second_sigterm_ends_the_process_at_once(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference
) -> None:
    env = {"LLM_BASE_URL": f"{fake_inference.url}/llm", "SHUTDOWN_SECONDS": "3600"}
    async with spawn(scene.emu, tmp_path, env) as process:
        await scene.emu.wait_for(lambda: scene.emu.command_syncs, 60, "the bot process to sync its commands")
        fake_inference.slow(40)  # the graceful shutdown would wait for this answer (the fake server waits it out)
        await scene.ask("Will it stop?")
        await until(lambda: fake_inference.requests, 30)  # the question reached the oracle
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        while b"Shutting down" not in (line := await asyncio.wait_for(process.stderr.readline(), 30)):
            assert line, "the bot exited without shutting down"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == -signal.SIGTERM


async def test_a_process_that_cannot_exit_is_ended_after_the_grace() -> None:
    hanging = "import threading\nfrom bot.client import _exit_later\n_exit_later(0.5)\nthreading.Event().wait()\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", hanging, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        assert await asyncio.wait_for(process.wait(), 60) == 1  # the main thread never returns by itself
    finally:
        if process.returncode is None:
            process.kill()
