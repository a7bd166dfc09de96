"""The metrics server's parts that need no Discord: speech slots in use, which shards count as disconnected."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import REGISTRY

from audio.speech import SpeechScheduler, Voice
from bot.client import build_bot
from bot.monitoring import disconnected_shards, refresh_gauges
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import make_settings

VOICE = Voice("A calm voice.", 1)


def slots() -> float | None:
    return REGISTRY.get_sample_value("magic8ball_speech_slots_in_use")


class HeldEngine(SineEngine):
    """Generates its first chunk only once `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def stream(self, text, voice, cancel=None):  # type: ignore[no-untyped-def]
        self.release.wait(30)
        yield from super().stream(text, voice, cancel)


async def test_speech_slots_and_queue_are_read_at_each_scrape(tmp_path: Path) -> None:
    engine = HeldEngine()
    scheduler = SpeechScheduler(engine, queue_size=4)
    bot = build_bot(make_settings(tmp_path))
    bot.speech = scheduler

    def scraped() -> tuple[float | None, float | None]:
        refresh_gauges(bot)
        return slots(), REGISTRY.get_sample_value("magic8ball_speech_queue")

    try:
        first, second = scheduler.stream(1, "Yes.", VOICE), scheduler.stream(2, "No.", VOICE)
        await until(lambda: scraped() == (1, 1))  # one generates, one waits
        engine.release.set()
        assert [chunk.size async for chunk in first] and [chunk.size async for chunk in second]
        await until(lambda: scraped() == (0, 0))
    finally:
        engine.release.set()
        await scheduler.close()


def test_shards_not_launched_yet_are_disconnected(tmp_path: Path) -> None:
    assert disconnected_shards(build_bot(make_settings(tmp_path, shard_count=4, shard_ids=(2, 3)))) == [2, 3]
    assert disconnected_shards(build_bot(make_settings(tmp_path))) == [0]


async def test_metrics_listen_on_this_machine_only_by_default(tmp_path: Path) -> None:
    bot = build_bot(make_settings(tmp_path))
    port = await bot.monitoring.start(bot.settings.metrics_host, 0)
    try:
        assert bot.monitoring._runner is not None
        assert [address[:2] for address in bot.monitoring._runner.addresses] == [("127.0.0.1", port)]
    finally:
        await bot.monitoring.stop()
