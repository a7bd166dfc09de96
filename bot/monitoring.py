"""The metrics and health server (`METRICS_PORT`): Prometheus `/metrics` and `/healthz`, in the bot's event loop.

Counters and histograms are recorded where things happen (see `bot.metrics`); the gauges that describe the bot's
state now (shards, latency, voice connections, queues) are read from the bot at each scrape.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import discord
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from bot.metrics import GATEWAY_LATENCY, PLAYER_QUEUE, SHARDS_CONNECTED, SPEECH_QUEUE, SPEECH_SLOTS, VOICE_CONNECTIONS

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)


def refresh_gauges(bot: MagicBot) -> None:
    """Set the state gauges from the bot: shards, gateway latency, voice connections, queues."""
    GATEWAY_LATENCY.clear()
    for shard_id, latency in bot.latencies:
        if math.isfinite(latency):  # infinite until the shard's first heartbeat was acknowledged
            GATEWAY_LATENCY.labels(shard=str(shard_id)).set(latency)
    SHARDS_CONNECTED.set(sum(not shard.is_closed() for shard in bot.shards.values()))
    VOICE_CONNECTIONS.set(sum(isinstance(vc, discord.VoiceClient) and vc.is_connected() for vc in bot.voice_clients))
    PLAYER_QUEUE.set(bot.voice.answers_queued if bot.voice is not None else 0)
    SPEECH_QUEUE.set(bot.speech.waiting if bot.speech is not None else 0)
    SPEECH_SLOTS.set(bot.speech.running if bot.speech is not None else 0)


def disconnected_shards(bot: MagicBot) -> list[int]:
    """This process's shards that are not connected to the gateway now (all of them before the launch)."""
    if bot.shard_count is None:
        return list(bot.shard_ids or [0])
    expected = bot.shard_ids or range(bot.shard_count)
    return [i for i in expected if (shard := bot.get_shard(i)) is None or shard.is_closed()]


async def health_problems(bot: MagicBot) -> dict[str, str]:
    """What is unhealthy, by part (`shards`, `store`, `tts`), as sentences; empty when all is well."""
    problems: dict[str, str] = {}
    if down := disconnected_shards(bot):
        problems["shards"] = f"Not connected to the Discord gateway: shard {', '.join(map(str, down))}."
    if not await bot.store.ping():  # a read of a table, at most one per few seconds (GuildStore.ping)
        problems["store"] = "The database does not answer."
    if speech := bot.speech_problem():  # loading, failed to load (retrying), or an engine that reports a fault
        problems["tts"] = speech
    return problems


class MonitoringServer:
    """Serves `/metrics` and `/healthz` for one bot; `start()` in the bot's loop, `stop()` at shutdown."""

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot
        self.port = 0  # the bound port once started
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port` (port 0 picks a free one); returns the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("Serving metrics and health on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        refresh_gauges(self.bot)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = await health_problems(self.bot)
        body = {"status": "unhealthy" if problems else "ok", "failing": problems}
        return web.json_response(body, status=503 if problems else 200)
