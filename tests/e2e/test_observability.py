"""Metrics, health and logs of a running bot: scraped over HTTP after real scenarios across the emulator."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bot.client import MagicBot, SpeechStatus
from bot.logs import JsonFormatter
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import Scene, answered, ephemeral_reply, final_embed, join, make_settings, running_bot
from tests.e2e.harness import SourceSpy, build_scene
from tests.emulator import DiscordEmulator

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
QUESTION = "Does the purple walrus dream of electric herring?"


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """The emulator with 100 ms heartbeats, so the gateway latency is known within the test."""
    async with DiscordEmulator(heartbeat_interval_ms=100) as emu:
        with emu.patch():
            yield emu
    assert not emu.internal_errors and not emu.gateway.misrouted


@pytest.fixture
def scene(emulator: DiscordEmulator) -> Scene:
    return build_scene(emulator)


def monitored(tmp_path: Path, **overrides: Any) -> Any:
    """Settings serving metrics and health on a free loopback port."""
    return make_settings(tmp_path, metrics_port=0, metrics_host="127.0.0.1", **overrides)


async def scrape(http: aiohttp.ClientSession, bot: MagicBot) -> Samples:
    """Every sample of the bot's `/metrics`, by name and labels."""
    async with http.get(f"http://127.0.0.1:{bot.monitoring.port}/metrics") as response:
        assert response.status == 200 and response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 when it does not exist yet, like a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def health(http: aiohttp.ClientSession, bot: MagicBot) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{bot.monitoring.port}/healthz") as response:
        return response.status, await response.json()


async def poll_health(
    http: aiohttp.ClientSession, bot: MagicBot, done: Callable[[int], bool], timeout: float = 30
) -> dict[str, Any]:
    """Ask `/healthz` until its status satisfies `done` (bounded); returns that answer's body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await health(http, bot)
        if done(status):
            return body
        assert time.monotonic() < deadline, f"/healthz still answers {status}: {body}"
        await asyncio.sleep(0.05)


async def test_metrics_count_what_happened(scene: Scene, tmp_path: Path) -> None:
    speaking = threading.Event()  # the answer's first chunk is out; the rest waits until `during` is scraped
    tts = SineEngine(seconds_per_char=0.25, hold=speaking, hold_after=1)
    async with (
        running_bot(scene.emu, monitored(tmp_path), tts=tts) as bot,
        aiohttp.ClientSession() as http,
    ):
        spy = SourceSpy(bot)
        before = await scrape(http, bot)
        await join(scene)
        spoken = await scene.ask("Will the numbers add up?")
        await spoken.wait_for(answered, 60)  # revealed: the answer is being spoken now
        during = await scrape(http, bot)
        speaking.set()
        player = bot.voice.player(scene.guild.id)
        assert player is not None
        await until(lambda: not player.busy, 60)
        assert await ephemeral_reply(await scene.ask("   ")) == "Your question is empty: type something to ask."
        await until(lambda: all(math.isfinite(latency) for _, latency in bot.latencies), 30)
        after = await scrape(http, bot)

    assert "footer" not in final_embed(spoken)
    (source,) = [s.source for s in spy.spoken]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("magic8ball_questions_total", source="slash", outcome="spoken") == 1
    assert delta("magic8ball_questions_total", source="slash", outcome="refused") == 1
    for stage in ("oracle", "first_voice_packet", "answer"):
        assert delta("magic8ball_stage_seconds_count", stage=stage) == 1, stage
    assert delta("magic8ball_stage_seconds_count", stage="transcription") == 0  # typed, not recorded
    assert delta("magic8ball_voice_underruns_total") == source.underruns
    assert value(during, "magic8ball_player_queue") == 1  # the answer being spoken
    assert value(during, "magic8ball_voice_connections") == 1
    assert value(after, "magic8ball_player_queue") == 0
    assert value(after, "magic8ball_speech_queue") == value(after, "magic8ball_speech_slots_in_use") == 0
    assert value(after, "magic8ball_shards_connected") == 1
    latency = after[("magic8ball_gateway_latency_seconds", frozenset({("shard", "0")}))]
    assert 0 <= latency < 10  # the heartbeat round trip on loopback


async def test_healthz_follows_the_gateway_and_the_store(scene: Scene, tmp_path: Path) -> None:
    async with running_bot(scene.emu, monitored(tmp_path)) as bot, aiohttp.ClientSession() as http:
        assert await health(http, bot) == (200, {"status": "ok", "failing": {}})
        async with scene.emu.gateway_down():
            body = await poll_health(http, bot, lambda status: status == 503)
            assert body == {
                "status": "unhealthy",
                "failing": {"shards": "Not connected to the Discord gateway: shard 0."},
            }
        await poll_health(http, bot, lambda status: status == 200)
        assert (scene.emu.gateway.resumes, scene.emu.gateway.identifies) == (1, 1)

        metrics = await scrape(http, bot)
        assert value(metrics, "magic8ball_shards_connected") == 1
        bot.speech_status = SpeechStatus.LOADING
        assert await health(http, bot) == (503, {"status": "unhealthy", "failing": {"tts": SpeechStatus.LOADING.note}})
        bot.speech_status = SpeechStatus.READY
        await bot.store.close()  # the database is gone
        assert await health(http, bot) == (
            503,
            {"status": "unhealthy", "failing": {"store": "The database does not answer."}},
        )


async def test_logs_are_json_lines_with_the_guild_and_never_the_question(scene: Scene, tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        async with running_bot(scene.emu, make_settings(tmp_path), tts=SineEngine()):
            await join(scene)
            record = await scene.ask(QUESTION)
            await record.wait_for(answered, 60)
            await scene.emu.voice(scene.guild.id).wait_for_utterances(1, 60)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all(set(line) >= {"time", "level", "logger", "guild", "message"} for line in lines)
    assert any(line["guild"] == scene.guild.id and line["logger"].startswith("discord.voice") for line in lines)
    assert all(line["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL") for line in lines)
    text = stream.getvalue()
    assert QUESTION not in text and scene.emu.token not in text
