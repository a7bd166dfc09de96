"""GuildPlayer: FIFO without overlap, bounded queue, /stop, TTS faults, voice drops, idle timeout.

Real `SpeechScheduler` and `StreamingSource` (with ffmpeg); the speech engine and the voice client are doubles.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from audio.source import StreamingSource
from audio.speech import SpeechScheduler, Voice
from bot.playback import GuildPlayer, Outcome, PlayerClosed, QueueFull, VoiceLink
from tests.bot.doubles import FakeVoiceClient, SineEngine, until

pytestmark = pytest.mark.timeout(60)
VOICE = Voice("A calm test voice.", 7)


class Rig:
    """A player wired to a sine engine and a fake voice client."""

    def __init__(self, ffmpeg: str, engine: SineEngine, *, queue_size: int = 3, idle_seconds: float = 30.0) -> None:
        self.engine = engine
        self.client = FakeVoiceClient()
        self.idle = asyncio.Event()
        self.scheduler = SpeechScheduler(engine, queue_size=8)
        self.player = GuildPlayer(
            connect=self.connect,
            synthesize=lambda text, voice: self.scheduler.stream("guild", text, voice),
            make_source=lambda text: StreamingSource(engine.sample_rate, ffmpeg=ffmpeg, expected_seconds=0.5),
            queue_size=queue_size,
            idle_seconds=idle_seconds,
            on_idle=self.on_idle,
        )

    async def connect(self) -> VoiceLink | None:
        return self.client if self.client.connected else None

    async def on_idle(self) -> None:
        self.idle.set()

    async def close(self) -> None:
        await self.player.close()
        await self.scheduler.close()
        await asyncio.to_thread(self.client.join)


@pytest.fixture
async def rig(ffmpeg: str) -> AsyncIterator[Rig]:
    rig = Rig(ffmpeg, SineEngine(fail_at={"fails at once": 0, "fails after a while " * 5: 2}))
    yield rig
    await rig.close()


async def test_answers_are_spoken_in_order_without_overlap(rig: Rig) -> None:
    started: list[str] = []
    texts = ["first answer " * 4, "second", "third answer " * 2]

    def on_start(text: str) -> Callable[[], asyncio.Future[None]]:
        async def announce() -> None:
            started.append(text)

        return lambda: asyncio.ensure_future(announce())

    utterances = [rig.player.submit(text, VOICE, on_start(text)) for text in texts]
    outcomes = await asyncio.gather(*(u.result for u in utterances))

    assert outcomes == [Outcome.SPOKEN] * 3
    assert started == texts
    assert [text for text, _ in rig.engine.spoken] == texts
    assert rig.client.plays == 3 and not rig.client.overlapped
    seconds = sum(len(t) for t in texts) * rig.engine.seconds_per_char
    assert len(rig.client.frames) >= seconds / 0.02 * 0.9  # every answer was played to its end


async def test_full_queue_refuses_and_stop_clears_everything(rig: Rig) -> None:
    rig.client.flowing.clear()  # the first answer keeps playing until released
    first = rig.player.submit("a long first answer", VOICE)
    await until(lambda: rig.client.plays == 1)
    waiting = [rig.player.submit(f"waiting {i}", VOICE) for i in range(3)]
    assert rig.player.full and rig.player.pending == 3
    with pytest.raises(QueueFull) as refused:
        rig.player.submit("one too many", VOICE)
    assert refused.value.size == 3

    assert rig.player.stop() == 4
    assert await first.result is Outcome.STOPPED and first.started
    assert [await u.result for u in waiting] == [Outcome.STOPPED] * 3
    await until(lambda: not rig.client.is_playing())

    rig.client.flowing.set()
    again = rig.player.submit("still serving", VOICE)
    assert await again.result is Outcome.SPOKEN
    assert rig.player.stop() == 0


async def test_tts_failure_before_audio_is_reported_and_the_queue_goes_on(rig: Rig) -> None:
    failed = rig.player.submit("fails at once", VOICE)
    after = rig.player.submit("next one", VOICE)
    assert await failed.result is Outcome.TTS_FAILED
    assert not failed.started and failed.tts_error is not None
    assert await after.result is Outcome.SPOKEN


async def test_tts_failure_mid_answer_is_reported_and_the_queue_goes_on(rig: Rig) -> None:
    failed = rig.player.submit("fails after a while " * 5, VOICE)
    after = rig.player.submit("next one", VOICE)
    assert await failed.result is Outcome.TTS_FAILED
    assert await after.result is Outcome.SPOKEN
    assert not rig.client.overlapped


async def test_voice_drop_mid_answer_then_no_voice(rig: Rig) -> None:
    rig.client.flowing.clear()
    playing = rig.player.submit("dropped halfway", VOICE)
    queued = rig.player.submit("never spoken", VOICE)
    await until(lambda: playing.started)
    rig.client.drop()
    assert await playing.result is Outcome.DROPPED
    assert await queued.result is Outcome.NO_VOICE
    assert not queued.started


async def test_failing_announcement_does_not_stop_the_answer(rig: Rig) -> None:
    async def broken() -> None:
        raise RuntimeError("Discord said no")

    utterance = rig.player.submit("spoken anyway", VOICE, broken)
    assert await utterance.result is Outcome.SPOKEN


async def test_idle_player_reports_idle_and_restarts_on_demand(ffmpeg: str) -> None:
    rig = Rig(ffmpeg, SineEngine(), idle_seconds=0.2)
    try:
        rig.player.start()
        await asyncio.wait_for(rig.idle.wait(), 10)
        rig.idle.clear()
        utterance = rig.player.submit("after a nap", VOICE)
        assert await utterance.result is Outcome.SPOKEN
        await asyncio.wait_for(rig.idle.wait(), 10)
    finally:
        await rig.close()


async def test_closed_player_stops_waiting_answers(rig: Rig) -> None:
    rig.client.flowing.clear()
    playing = rig.player.submit("interrupted by shutdown", VOICE)
    queued = rig.player.submit("waiting", VOICE)
    await until(lambda: playing.started)
    await rig.player.close()
    assert await playing.result is Outcome.STOPPED
    assert await queued.result is Outcome.STOPPED
    with pytest.raises(RuntimeError):
        rig.player.start()


async def test_a_closed_player_refuses_new_answers(rig: Rig) -> None:
    await rig.player.close()
    with pytest.raises(PlayerClosed):
        rig.player.submit("too late", VOICE)
    assert rig.player.pending == 0 and not rig.engine.spoken
