"""The streaming Parler-TTS engine on a tiny random-weight model, and the fair speech scheduler."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from audio.speech import JENNY_DESCRIPTION, SpeechScheduler, TTSError, TTSQueueFull, Voice, split_sentences
from audio.speech.reference import TTSEngine

pytestmark = pytest.mark.timeout(120)

TEXT = "It is certain."
OTHER = "Outlook not so good."
VOICE = Voice(JENNY_DESCRIPTION, seed=7)
HOP = 512  # DAC samples per frame


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2)))


@pytest.fixture(scope="module")
def solo_chunks(tiny_tts_engine: TTSEngine) -> list[np.ndarray]:
    return list(tiny_tts_engine.stream(TEXT, VOICE))


def spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, before: Callable[[], None]) -> None:
    """Call `before()` ahead of every call of `owner.name`."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_split_sentences() -> None:
    assert split_sentences("  Yes. Ask again later!  Why?\nNo… ") == ["Yes.", "Ask again later!", "Why?", "No…"]
    assert split_sentences("   ") == []


def test_engine_loads_once_through_from_pretrained(tiny_tts_engine: TTSEngine) -> None:
    assert tiny_tts_engine.sample_rate == 44100
    assert tiny_tts_engine.device.type == "cpu"
    assert tiny_tts_engine.model.dtype == torch.float32
    assert tiny_tts_engine.model.decoder.config._attn_implementation == "sdpa"
    assert TTSEngine.load(tiny_tts_engine.config, frames_per_sentence=40) is tiny_tts_engine


def test_chunk_sizes_and_count(solo_chunks: list[np.ndarray]) -> None:
    # 40 frames: first round(0.1 s * 86) = 9, then twice that (0.2 s: 17), the rest at the end.
    assert [len(chunk) for chunk in solo_chunks] == [9 * HOP, 17 * HOP, 14 * HOP]
    assert all(chunk.dtype == np.float32 and chunk.ndim == 1 for chunk in solo_chunks)


def test_stream_matches_a_full_decode_of_the_same_tokens(
    tiny_tts_engine: TTSEngine, solo_chunks: list[np.ndarray]
) -> None:
    torch.manual_seed(VOICE.seed)
    full = tiny_tts_engine.model.generate(**tiny_tts_engine.generate_kwargs(TEXT, VOICE)).reshape(-1).numpy()
    streamed = np.concatenate(solo_chunks)
    assert streamed.shape == full.shape == (40 * HOP,)
    assert snr_db(full, streamed) >= 40


def test_codec_work_is_bounded_per_chunk(tiny_tts_engine: TTSEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    original = tiny_tts_engine.model.audio_encoder.decode

    def counting(audio_codes: torch.Tensor, **kwargs: Any) -> Any:
        decoded.append(audio_codes.shape[-1])
        return original(audio_codes=audio_codes, **kwargs)

    monkeypatch.setattr(tiny_tts_engine.model.audio_encoder, "decode", counting)
    chunks = list(tiny_tts_engine.stream(f"{TEXT} {OTHER}", VOICE))
    # One codec call per chunk (no full re-decode at the end), each at most a chunk plus 2 x 8 context frames.
    assert len(decoded) == len(chunks) == 5
    assert max(decoded) <= 22 + 2 * 8
    assert sum(decoded) <= 80 + len(chunks) * 2 * 8


def test_sentences_are_spoken_in_order(tiny_tts_engine: TTSEngine, solo_chunks: list[np.ndarray]) -> None:
    chunks = list(tiny_tts_engine.stream(f"{TEXT} {OTHER}", VOICE))
    # Only the answer's first chunks are short; the second sentence starts with a full-size (0.25 s) chunk.
    assert [len(chunk) // HOP for chunk in chunks] == [9, 17, 14, 22, 18]
    audio = np.concatenate(chunks)
    np.testing.assert_array_equal(audio[: 40 * HOP], np.concatenate(solo_chunks))
    second = tiny_tts_engine.synthesize(OTHER, VOICE)
    assert snr_db(second, audio[40 * HOP :]) >= 40


def test_amplitude_is_bounded_and_finite(solo_chunks: list[np.ndarray]) -> None:
    audio = np.concatenate(solo_chunks)
    assert np.isfinite(audio).all()
    assert 0 < np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("gain", [0.0, 1e4, float("nan")], ids=["silence", "overload", "nan"])
def test_codec_output_is_limited_not_normalised(
    tiny_tts_engine: TTSEngine, monkeypatch: pytest.MonkeyPatch, gain: float
) -> None:
    original = tiny_tts_engine.model.audio_encoder.decode

    def scaled(**kwargs: Any) -> Any:
        output = original(**kwargs)
        output.audio_values = output.audio_values * gain
        return output

    monkeypatch.setattr(tiny_tts_engine.model.audio_encoder, "decode", scaled)
    audio = tiny_tts_engine.synthesize(TEXT, VOICE)
    assert audio.shape == (40 * HOP,)
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() <= 1.0
    if gain == 1e4:
        assert np.abs(audio).max() == 1.0
    else:
        assert not audio.any()


def test_same_voice_and_seed_give_the_same_audio(tiny_tts_engine: TTSEngine, solo_chunks: list[np.ndarray]) -> None:
    np.testing.assert_array_equal(tiny_tts_engine.synthesize(TEXT, VOICE), np.concatenate(solo_chunks))
    other_seed = tiny_tts_engine.synthesize(TEXT, Voice(JENNY_DESCRIPTION, seed=8))
    # Random codec weights make every code sequence sound alike, but not identical (a re-decode is >= 40 dB).
    assert snr_db(np.concatenate(solo_chunks), other_seed) < 35


def test_concurrent_requests_keep_their_own_random_state(
    tiny_tts_engine: TTSEngine, solo_chunks: list[np.ndarray]
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    with ThreadPoolExecutor(2) as pool:
        other = pool.submit(tiny_tts_engine.synthesize, OTHER, Voice("A male speaker with a deep voice.", 3))
        mine = pool.submit(tiny_tts_engine.synthesize, TEXT, VOICE)
        np.testing.assert_array_equal(mine.result(), np.concatenate(solo_chunks))
        assert other.result().shape == (40 * HOP,)
    # Requests seed a forked generator: the process's own random stream is untouched.
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("how", ["event", "close"])
def test_cancel_stops_within_one_step_and_frees_the_model(
    tiny_tts_engine: TTSEngine, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    steps: list[threading.Thread] = []
    spy(monkeypatch, tiny_tts_engine.model.decoder, "forward", lambda: steps.append(threading.current_thread()))
    cancel = threading.Event()
    stream = tiny_tts_engine.stream(TEXT, VOICE, cancel)
    next(stream)
    at_cancel = len(steps)
    if how == "event":
        cancel.set()
        assert list(stream) == []
    else:
        stream.close()
    # The next request gets the model (it waits for the cancelled one to let go) and all of its audio.
    assert tiny_tts_engine.synthesize(TEXT, VOICE).shape == (40 * HOP,)
    cancelled = steps[0]
    assert sum(thread is cancelled for thread in steps[at_cancel:]) <= 1
    assert sum(thread is cancelled for thread in steps) < 40 + 8


def test_generation_failure_reaches_the_consumer(tiny_tts_engine: TTSEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = itertools.count()

    def fail_at_step_30() -> None:
        if next(calls) == 30:
            raise RuntimeError("injected failure")

    spy(monkeypatch, tiny_tts_engine.model.decoder, "forward", fail_at_step_30)
    received: list[np.ndarray] = []
    with pytest.raises(TTSError) as failure:
        received.extend(tiny_tts_engine.stream(TEXT, VOICE))
    assert isinstance(failure.value.__cause__, RuntimeError)
    assert "injected failure" in str(failure.value)
    assert [len(chunk) for chunk in received] == [9 * HOP]  # the first chunk needs 25 steps
    monkeypatch.undo()
    assert tiny_tts_engine.synthesize(TEXT, VOICE).shape == (40 * HOP,)


class ScriptedEngine:
    """Stands in for the model: one chunk at once, a second when released, or stops when cancelled."""

    sample_rate = 16_000

    def __init__(self, max_streams: int = 1) -> None:
        self.max_streams = max_streams
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.release = threading.Event()

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        assert cancel is not None
        self.started.append(text)
        yield np.full(4, len(self.started), np.float32)
        while not self.release.is_set():
            if cancel.wait(0.005):
                self.cancelled.append(text)
                return
        if text == "boom":
            raise RuntimeError("engine broke")
        if text == "fatal":
            raise EngineThreadExit("engine thread ended")
        yield np.ones(4, np.float32)


class EngineThreadExit(BaseException):
    """What no `except Exception` catches."""


@pytest.fixture
async def scripted() -> Any:
    engine = ScriptedEngine()
    scheduler = SpeechScheduler(engine, queue_size=2)
    yield engine, scheduler
    engine.release.set()
    await scheduler.close()


async def drain(stream: Any) -> list[np.ndarray]:
    return [chunk async for chunk in stream]


async def test_queue_is_bounded_and_says_so(scripted: tuple[ScriptedEngine, SpeechScheduler]) -> None:
    engine, scheduler = scripted
    running = scheduler.stream(1, "a", VOICE)
    await anext(running)
    queued = [scheduler.stream(2, "b", VOICE), scheduler.stream(3, "c", VOICE)]
    with pytest.raises(TTSQueueFull, match="busy"):
        scheduler.stream(4, "d", VOICE)
    engine.release.set()
    assert len(await drain(running)) == 1
    for stream in queued:
        assert len(await drain(stream)) == 2
    assert len(await drain(scheduler.stream(4, "d", VOICE))) == 2


async def test_guilds_take_turns(scripted: tuple[ScriptedEngine, SpeechScheduler]) -> None:
    engine, scheduler = scripted
    first = scheduler.stream("guild-a", "a1", VOICE)
    await anext(first)
    later = [scheduler.stream("guild-a", "a2", VOICE), scheduler.stream("guild-b", "b1", VOICE)]
    engine.release.set()
    for stream in [first, *later]:
        await drain(stream)
    later.append(scheduler.stream("guild-a", "a3", VOICE))
    await drain(later[-1])
    assert engine.started == ["a1", "b1", "a2", "a3"]


async def test_closing_a_stream_cancels_it(scripted: tuple[ScriptedEngine, SpeechScheduler]) -> None:
    engine, scheduler = scripted
    running = scheduler.stream(1, "running", VOICE)
    await anext(running)
    queued = scheduler.stream(2, "queued", VOICE)
    assert scheduler.waiting == 1
    await queued.aclose()
    assert scheduler.waiting == 0
    await running.aclose()
    assert await drain(running) == []
    following = scheduler.stream(3, "next", VOICE)
    await anext(following)  # starts only once "running" has stopped
    engine.release.set()
    assert len(await drain(following)) == 1
    assert engine.started == ["running", "next"]
    assert engine.cancelled == ["running"]


async def test_cancelling_the_consumer_task_cancels_generation(
    scripted: tuple[ScriptedEngine, SpeechScheduler],
) -> None:
    engine, scheduler = scripted
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in scheduler.stream(1, "speech", VOICE):
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await anext(scheduler.stream(2, "next", VOICE))  # starts only once "speech" has stopped
    assert engine.cancelled == ["speech"]


async def test_engine_failure_reaches_the_async_consumer(
    scripted: tuple[ScriptedEngine, SpeechScheduler],
) -> None:
    engine, scheduler = scripted
    stream = scheduler.stream(1, "boom", VOICE)
    assert len(await anext(stream)) == 4
    engine.release.set()
    with pytest.raises(TTSError) as failure:
        await anext(stream)
    assert isinstance(failure.value.__cause__, RuntimeError)
    assert await drain(stream) == []


async def test_a_base_exception_in_the_engine_ends_the_answer_and_frees_its_stream(
    scripted: tuple[ScriptedEngine, SpeechScheduler],
) -> None:
    engine, scheduler = scripted
    stream = scheduler.stream(1, "fatal", VOICE)
    assert len(await anext(stream)) == 4
    engine.release.set()
    with pytest.raises(TTSError, match="engine thread ended"):
        await asyncio.wait_for(anext(stream), 30)
    assert await asyncio.wait_for(drain(scheduler.stream(1, "after", VOICE)), 30)  # the stream was freed
    await settled(scheduler)  # the last chunk reaches the consumer a little before the job's stream is freed


async def test_scheduler_streams_the_model_for_several_guilds(
    tiny_tts_engine: TTSEngine, solo_chunks: list[np.ndarray]
) -> None:
    scheduler = SpeechScheduler(tiny_tts_engine)
    try:
        mine, other = await asyncio.gather(
            drain(scheduler.stream(1, TEXT, VOICE)), drain(scheduler.stream(2, OTHER, Voice("A deep voice.", 5)))
        )
    finally:
        await scheduler.close()
    assert [len(chunk) for chunk in mine] == [len(chunk) for chunk in solo_chunks]
    np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(solo_chunks))
    assert sum(len(chunk) for chunk in other) == 40 * HOP


async def settled(scheduler: SpeechScheduler) -> None:
    """Wait until every stream is free again (a stream is freed once its thread has returned)."""
    async with asyncio.timeout(30):
        while scheduler.running:
            await asyncio.sleep(0.01)


async def test_one_guild_cannot_fill_the_queue_and_hears_when_to_retry() -> None:
    engine = ScriptedEngine()
    scheduler = SpeechScheduler(engine, queue_size=8, queue_per_key=2)
    try:
        running = scheduler.stream("loud", "r", VOICE)
        await anext(running)
        waiting = [scheduler.stream("loud", f"w{i}", VOICE) for i in range(2)]
        with pytest.raises(TTSQueueFull) as refused:
            scheduler.stream("loud", "one too many", VOICE)
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        assert f"about {int(refused.value.retry_after)} seconds" in refused.value.sentence
        quiet = scheduler.stream("quiet", "q", VOICE)  # another guild still gets in
        engine.release.set()
        for stream in [running, *waiting, quiet]:
            await drain(stream)
        assert engine.started.index("q") < engine.started.index("w1")
    finally:
        await scheduler.close()


async def test_streams_run_at_once_with_a_cap_per_guild() -> None:
    engine = ScriptedEngine(max_streams=3)
    scheduler = SpeechScheduler(engine, slots_per_key=2)
    try:
        streams = [scheduler.stream("busy", f"b{i}", VOICE) for i in range(3)] + [scheduler.stream("other", "o", VOICE)]
        for stream in (streams[0], streams[1], streams[3]):
            await anext(stream)  # three answers generate at once: two of "busy" (its cap) and "other"
        assert scheduler.running == 3 and scheduler.waiting == 1
        assert sorted(engine.started) == ["b0", "b1", "o"]
        engine.release.set()
        for stream in streams:
            await drain(stream)
        assert engine.started[-1] == "b2"
        await settled(scheduler)
        assert scheduler.waiting == 0 and scheduler._running == {}
    finally:
        await scheduler.close()


async def test_the_turn_order_forgets_guilds_with_nothing_queued() -> None:
    engine = ScriptedEngine()
    engine.release.set()
    scheduler = SpeechScheduler(engine)
    try:
        for guild in range(50):
            await drain(scheduler.stream(guild, "x", VOICE))
        await settled(scheduler)
        assert scheduler._last_turn == {}
    finally:
        await scheduler.close()


async def test_closing_the_scheduler_ends_waiting_and_running_answers() -> None:
    engine = ScriptedEngine()
    scheduler = SpeechScheduler(engine)
    running = scheduler.stream(1, "r", VOICE)
    await anext(running)
    waiting = scheduler.stream(2, "w", VOICE)
    await scheduler.close()
    for stream in (running, waiting):
        with pytest.raises(TTSError, match="closed"):
            await drain(stream)
    with pytest.raises(TTSError):
        scheduler.stream(3, "late", VOICE)
    async with asyncio.timeout(10):  # the running answer's thread sees its cancel flag within one step
        while engine.cancelled != ["r"]:
            await asyncio.sleep(0.01)
