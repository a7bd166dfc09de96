"""The serving engine on the tiny model: Parler's semantics, batching that does not change an answer, failures."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from transformers import AutoTokenizer

from audio.speech import JENNY_DESCRIPTION, SpeechScheduler, TTSConfig, TTSError, Voice
from audio.speech.codec import Block, CodecWorker, FrameBlocks, chunk_frames
from audio.speech.parler import (
    PackedLinear,
    decode_codes,
    fold_weight_norm,
    pack_linears,
    quantize_int8,
    unpack_linears,
)
from audio.speech.reference import TTSEngine
from audio.speech.server import SpeechServer
from tests.audio.test_tts import HOP, drain, snr_db
from tests.fakes.tiny_parler import generate_codes

pytestmark = pytest.mark.timeout(180)

FRAMES = 24  # per sentence: short sentences keep the tests fast
DEEP = "A male speaker with a deep voice talks quickly in a noisy room."
VOICES = [Voice(JENNY_DESCRIPTION, 7), Voice(DEEP, 3), Voice(JENNY_DESCRIPTION, 11)]
SENTENCES = ["It is certain.", "Outlook not so good.", "Ask again later!", "Most likely.", "Very doubtful."]
MAX_FRAMES = 60
WAIT = 60  # seconds: generous bounds for events on a loaded machine


def answer(index: int) -> tuple[str, Voice]:
    """The index-th test answer: one to three sentences, one of three voices."""
    count = 1 + index % 3
    text = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(count))
    return text, VOICES[index % len(VOICES)]


def silent_decode(codes: torch.Tensor) -> list[np.ndarray]:
    """A codec stand-in for tests that compare codes only: silence of the right length, at no cost."""
    return [np.zeros(codes.shape[-1] * HOP, np.float32) for _ in range(codes.shape[0])]


class Codes(list[torch.Tensor]):
    """A request's frame codes, with an event set at its first frame."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def append(self, frame: torch.Tensor) -> None:
        super().append(frame)
        self.started.set()


@dataclass
class Run:
    """One answer streamed on a thread: its codes, chunks and error."""

    codes: Codes = field(default_factory=Codes)
    cancel: threading.Event = field(default_factory=threading.Event)
    chunks: list[np.ndarray] = field(default_factory=list)
    error: BaseException | None = None
    future: Future[None] | None = None

    def result(self) -> Run:
        assert self.future is not None
        self.future.result(timeout=WAIT)
        return self


def start(pool: ThreadPoolExecutor, server: SpeechServer, text: str, voice: Voice) -> Run:
    run = Run()

    def consume() -> None:
        try:
            run.chunks.extend(server.stream(text, voice, run.cancel, codes=run.codes))
        except TTSError as exc:
            run.error = exc

    run.future = pool.submit(consume)
    return run


def solo(server: SpeechServer, text: str, voice: Voice) -> torch.Tensor:
    """The answer's codes decoded alone, `(frames, codebooks)`."""
    codes: list[torch.Tensor] = []
    list(server.stream(text, voice, codes=codes))
    return torch.stack(codes)


def frames(run: Run) -> torch.Tensor:
    return torch.stack(list(run.codes)) if run.codes else torch.zeros(0, 9, dtype=torch.long)


def rows_freed(server: SpeechServer) -> bool:
    """Wait (up to `WAIT`) for the loop to free the rows of ended answers: an answer's END can reach its consumer
    before the loop thread, still in that step, frees the row."""
    deadline = time.monotonic() + WAIT
    while server.loop.active and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    return server.loop.active == 0


def tiny_config(path: Path, **options: Any) -> TTSConfig:
    """The tests' engine settings, on the CPU even where a GPU is present."""
    return TTSConfig(model=str(path), device="cpu", first_chunk_s=0.1, chunk_s=0.25, context_frames=8, **options)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def make_server(path: Path, *, sample: bool, decode: Callable[..., Any] | None = silent_decode) -> SpeechServer:
    """A server on plain fp32 `nn.Linear`: its codes compare bit for bit with `generate()`'s."""
    return SpeechServer.load(
        tiny_config(path, max_batch=8, cpu_path="fp32"), frames_per_sentence=FRAMES, do_sample=sample, decode=decode
    )


@pytest.fixture(scope="module")
def greedy(tiny_parler_dir: Path) -> Iterator[SpeechServer]:
    server = make_server(tiny_parler_dir, sample=False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def sampled(tiny_parler_dir: Path) -> Iterator[SpeechServer]:
    server = make_server(tiny_parler_dir, sample=True)
    yield server
    server.close()


def test_greedy_batch_1_equals_generate(tiny_parler_dir: Path, greedy: SpeechServer) -> None:
    reference = TTSEngine.load(tiny_config(tiny_parler_dir), frames_per_sentence=FRAMES)
    for text, voice in zip(SENTENCES[:2], VOICES[:2], strict=True):  # one sentence: one `generate()` call
        kwargs = {**reference.generate_kwargs(text, voice), "do_sample": False}
        expected = generate_codes(reference.model, kwargs)
        assert expected.shape == (FRAMES, 9)
        assert torch.equal(solo(greedy, text, voice), expected)


def eos_biased(path: Path, gain: float) -> ParlerTTSForConditionalGeneration:
    """The tiny model with EOS made likely (`gain` > 0) or unlikely (< 0) and no other non-audio id chosen."""
    model = ParlerTTSForConditionalGeneration.from_pretrained(path).eval()
    eos = model.generation_config.eos_token_id
    direction = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        for head in model.decoder.lm_heads:
            head.weight[eos] += direction * gain
            head.weight[eos + 1 :] = 0
    return model


def test_eos_padding_and_min_length_follow_generate(tiny_parler_dir: Path) -> None:
    """Without the audio-only hook: EOS per codebook in turn, padding after it, no EOS before 10 tokens."""
    model = eos_biased(tiny_parler_dir, 0.5)  # EOS likely once allowed: sentences end early, frames stay audio
    tokenizer = AutoTokenizer.from_pretrained(tiny_parler_dir)
    config = tiny_config(tiny_parler_dir, max_batch=2, max_frames=MAX_FRAMES)
    server = SpeechServer(config, model, tokenizer, do_sample=False, decode=silent_decode)
    reference = TTSEngine(config, model, tokenizer)
    try:
        lengths = []
        for sentence, voice in zip(SENTENCES, (VOICES * 2)[:5], strict=True):
            kwargs = {**reference.generate_kwargs(sentence, voice), "do_sample": False}
            expected = generate_codes(model, {**kwargs, "max_new_tokens": MAX_FRAMES + 8})
            lengths.append(len(expected))
            assert torch.equal(solo(server, sentence, voice), expected)
        assert min(lengths) > 0 and max(lengths) < MAX_FRAMES  # EOS ended every sentence early
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_an_answer_is_the_same_alone_and_in_a_batch_of_8(
    mode: str, request: pytest.FixtureRequest, pool: ThreadPoolExecutor
) -> None:
    server: SpeechServer = request.getfixturevalue(mode)
    answers = [answer(i) for i in range(8)]
    expected = [solo(server, text, voice) for text, voice in answers]
    runs: list[Run] = []
    for group in (answers[:3], answers[3:6], answers[6:]):  # later answers join a batch that is under way
        started = [start(pool, server, text, voice) for text, voice in group]
        for run in started:
            assert run.codes.started.wait(WAIT)
        runs.extend(started)
    for run, codes in zip(runs, expected, strict=True):
        assert run.result().error is None
        assert torch.equal(frames(run), codes)
    assert {len(codes) for codes in expected} == {FRAMES, 2 * FRAMES, 3 * FRAMES}  # some finish early
    if mode == "sampled":
        assert not torch.equal(expected[0], solo(server, answers[0][0], Voice(JENNY_DESCRIPTION, 8)))


def test_the_first_answer_of_a_new_server_is_like_any_other(tiny_parler_dir: Path) -> None:
    server = make_server(tiny_parler_dir, sample=True)  # fresh: its cache is prepared during the first answer
    try:
        text, voice = answer(5)
        assert torch.equal(solo(server, text, voice), solo(server, text, voice))
    finally:
        server.close()


def test_a_voice_description_is_encoded_once(greedy: SpeechServer, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    encode = greedy.decoder.encode
    monkeypatch.setattr(greedy.decoder, "encode", lambda *args: (encoded.append(1), encode(*args))[1])
    voice = Voice("Jenny speaks quickly with clear audio quality.", 5)
    for text in SENTENCES[:3]:
        solo(greedy, text, voice)
    assert len(encoded) == 1


def test_cancelling_3_of_8_keeps_the_others_and_frees_their_rows(
    greedy: SpeechServer, pool: ThreadPoolExecutor
) -> None:
    answers = [(" ".join(SENTENCES[(i + k) % 5] for k in range(3)), VOICES[i % 3]) for i in range(8)]
    waiting = [answer(i) for i in (0, 3, 6)]  # one sentence each
    expected = [solo(greedy, text, voice) for text, voice in answers + waiting]
    runs = [start(pool, greedy, text, voice) for text, voice in answers]
    for run in runs:
        assert run.codes.started.wait(WAIT)
    queued = [start(pool, greedy, text, voice) for text, voice in waiting]
    for run in runs[:3]:
        run.cancel.set()
    for run in queued:  # the freed rows serve the waiting answers while the five others still run
        assert run.codes.started.wait(WAIT)
    assert any(len(run.codes) < len(codes) for run, codes in zip(runs[3:], expected[3:8], strict=True))
    for run, codes in zip(runs[:3], expected[:3], strict=True):
        run.result()
        assert len(run.codes) < len(codes)
        assert torch.equal(frames(run), codes[: len(run.codes)])
    for run, codes in zip(runs[3:] + queued, expected[3:], strict=True):
        assert run.result().error is None
        assert torch.equal(frames(run), codes)
    assert greedy.loop.active <= greedy.max_streams


async def test_a_guild_with_10_queued_answers_holds_at_most_its_slots_while_another_waits(
    greedy: SpeechServer,
) -> None:
    holding: Counter[str] = Counter()
    most: Counter[str] = Counter()
    started: list[str] = []
    lock = threading.Lock()

    class Counted:
        """The server as the scheduler sees it, counting each guild's answers that hold a row."""

        sample_rate, max_streams = greedy.sample_rate, greedy.max_streams

        def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
            guild = text.split()[0]
            with lock:
                holding[guild] += 1
                most[guild] = max(most[guild], holding[guild])
                started.append(guild)
            try:
                yield from greedy.stream(text, voice, cancel)
            finally:
                with lock:
                    holding[guild] -= 1

    scheduler = SpeechScheduler(Counted(), queue_size=16, queue_per_key=10, slots_per_key=2)
    try:
        busy = [scheduler.stream("busy", f"Busy answer {i}.", VOICES[0]) for i in range(10)]
        other = scheduler.stream("other", "Other answer.", VOICES[1])
        heard = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in [*busy, other])), WAIT)
    finally:
        await scheduler.close()
    assert all(sum(len(c) for c in chunks) == FRAMES * HOP for chunks in heard)  # every answer spoken whole
    assert most == {"Busy": 2, "Other": 1}  # 8 rows free, yet the busy guild never held more than its 2
    assert started.index("Other") < 3  # the other guild did not wait behind the busy guild's queue


def test_a_failing_request_ends_alone(greedy: SpeechServer, pool: ThreadPoolExecutor) -> None:
    text, voice = answer(2)
    expected = solo(greedy, text, voice)
    good = start(pool, greedy, text, voice)
    assert good.codes.started.wait(WAIT)
    bad = start(pool, greedy, "Yes.", Voice("very " * 300 + "calm.", 1))  # too long a description
    assert isinstance(bad.result().error, TTSError)
    assert "description" in str(bad.error)
    assert good.result().error is None
    assert torch.equal(frames(good), expected)


def test_a_failing_step_ends_the_answers_in_flight_and_the_server_goes_on(
    greedy: SpeechServer, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text, voice = answer(1)
    expected = solo(greedy, text, voice)
    step = greedy.loop.runner
    gate = threading.Event()
    failures = [RuntimeError("device lost"), torch.OutOfMemoryError("CUDA out of memory")]

    def failing(*args: Any) -> torch.Tensor:
        if gate.is_set() and failures:
            raise failures.pop(0)
        return step(*args)

    monkeypatch.setattr(greedy.loop, "runner", failing)
    for error in ("device lost", "out of memory"):
        runs = [start(pool, greedy, text, voice) for _ in range(2)]
        for run in runs:
            assert run.codes.started.wait(WAIT)
        gate.set()
        for run in runs:
            assert isinstance(run.result().error, TTSError)
            assert error in str(run.error)
        gate.clear()
    assert greedy.loop.capacity == 4  # out of memory: half the batch
    assert "at most 4 answers" in caplog.text
    monkeypatch.setattr(greedy.loop, "capacity", greedy.max_streams)
    assert torch.equal(solo(greedy, text, voice), expected)


def test_batched_audio_matches_one_full_decode_of_its_codes(tiny_parler_dir: Path, pool: ThreadPoolExecutor) -> None:
    server = make_server(tiny_parler_dir, sample=True, decode=None)
    try:
        runs = [start(pool, server, *answer(i)) for i in range(4)]
        for run in runs:
            assert run.result().error is None
            audio = np.concatenate(run.chunks)
            sentences = frames(run).split(FRAMES)  # each sentence is decoded on its own
            full = np.concatenate([decode_codes(server.model, codes.T) for codes in sentences])
            assert audio.shape == full.shape == (len(run.codes) * HOP,)
            assert snr_db(full, audio) >= 60
    finally:
        server.close()


class GatedCodec:
    """A codec stand-in that records each call's blocks and holds the first call until `release` is set."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.busy, self.release = threading.Event(), threading.Event()

    def __call__(self, codes: torch.Tensor) -> list[np.ndarray]:
        self.calls.append([int(item[0, 0]) for item in codes])
        self.busy.set()
        assert self.release.wait(WAIT)
        return [np.full(codes.shape[-1] * 2, float(item[0, 0])) for item in codes]


def block(value: int, frames: int = 4) -> Block:
    return Block(torch.full((9, frames), value), 0, frames)


def test_codec_worker_batches_heads_of_one_length_and_keeps_each_order() -> None:
    codec = GatedCodec()
    worker = CodecWorker(codec, max_batch=4)
    first, second, third = [], [], []
    worker.submit(block(1), first.append, lambda: None)
    assert codec.busy.wait(WAIT)  # the worker is inside the first call; the next jobs queue up
    worker.submit(block(2), first.append, lambda: None)
    worker.submit(block(3, 6), second.append, lambda: None)
    worker.submit(block(4), third.append, lambda: None)
    worker.send("end", first.append)
    codec.release.set()
    worker.close()
    # Requests with less audio delivered go first (3, 4 before 2); heads of one length share a call (4 with 2).
    assert codec.calls == [[1], [3], [4, 2]]
    assert [item if isinstance(item, str) else float(item[0]) for item in first] == [1, 2, "end"]
    assert [float(item[0]) for item in second + third] == [3, 4]


def test_codec_worker_skips_blocks_of_cancelled_requests() -> None:
    codec = GatedCodec()
    worker = CodecWorker(codec)
    heard: list[Any] = []
    cancelled = threading.Event()
    worker.submit(block(1), heard.append, lambda: None, cancelled.is_set)
    assert codec.busy.wait(WAIT)
    worker.submit(block(2), heard.append, lambda: None, cancelled.is_set)
    worker.send("end", heard.append)
    cancelled.set()
    codec.release.set()
    worker.close()
    assert codec.calls == [[1]]
    assert heard[-1] == "end" and len(heard) == 2


def test_codec_failure_ends_the_requests_concerned() -> None:
    def decode(codes: torch.Tensor) -> list[np.ndarray]:
        raise RuntimeError("codec broke")

    worker = CodecWorker(decode)
    received: list[Any] = []
    aborted = threading.Event()
    worker.submit(Block(torch.zeros(9, 3, dtype=torch.long), 0, 3), received.append, aborted.set)
    worker.close()
    assert aborted.is_set()
    assert isinstance(received[0], RuntimeError)


def test_a_codec_failure_ends_its_answer_and_nothing_more_is_decoded_for_it(tiny_parler_dir: Path) -> None:
    calls: list[int] = []

    def decode(codes: torch.Tensor) -> list[np.ndarray]:
        calls.append(codes.shape[0])
        if len(calls) == 2:
            raise RuntimeError("codec broke")
        return silent_decode(codes)

    server = make_server(tiny_parler_dir, sample=False, decode=decode)
    try:
        chunks = []
        with pytest.raises(TTSError, match="codec broke"):
            for chunk in server.stream(" ".join(SENTENCES), VOICES[0]):
                chunks.append(chunk)
        assert len(chunks) == 1
        assert server.synthesize(SENTENCES[0], VOICES[1]).size == FRAMES * HOP  # the server goes on
        assert rows_freed(server)
    finally:
        server.close()
    # Two calls for the failed answer (its later blocks were dropped, not decoded), then the other answer's blocks.
    blocks = FrameBlocks(8, chunk_frames(0.1, 0.25, 44100 / 512))
    sizes = [b for b in (*(blocks.add(torch.zeros(9)) for _ in range(FRAMES)), blocks.flush()) if b is not None]
    assert len(calls) == 2 + len(sizes)


def test_codec_weight_norm_folds_into_plain_convolutions(tiny_parler_dir: Path) -> None:
    model = ParlerTTSForConditionalGeneration.from_pretrained(tiny_parler_dir).eval()
    codes = torch.randint(0, 1024, (9, 20))
    before = decode_codes(model, codes)
    assert fold_weight_norm(model.audio_encoder) > 0
    assert not any(hasattr(module, "parametrizations") for module in model.audio_encoder.modules())
    assert snr_db(before, decode_codes(model, codes)) >= 80


@pytest.mark.parametrize(("rows", "bias"), [(1, True), (2, False), (5, True), (12, True)])
def test_packed_linear_computes_what_linear_does_and_unpacks_exactly(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    linear = torch.nn.Linear(64, 96, bias=bias)
    module = torch.nn.Sequential(linear)
    assert pack_linears(module) == 1 and isinstance(module[0], PackedLinear)
    x = torch.randn(rows, 1, 64)
    torch.testing.assert_close(module(x), linear(x), rtol=1e-5, atol=1e-5)
    assert unpack_linears(module) == 1 and type(module[0]) is torch.nn.Linear
    assert torch.equal(module[0].weight, linear.weight)


def test_int8_quantizes_packed_layers() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(4, 4))
    pack_linears(module)
    quantize_int8(module)
    assert type(module[0]).__module__.startswith("torch.ao.nn.quantized")


def test_int8_server_quantizes_the_decoder_and_speaks(tiny_parler_dir: Path) -> None:
    server = SpeechServer.load(
        tiny_config(tiny_parler_dir, max_batch=2, quantize="int8", cpu_path="int8"),
        frames_per_sentence=FRAMES,
        decode=silent_decode,
    )
    try:
        linear = server.model.decoder.model.decoder.layers[0].fc1
        assert type(linear).__module__.startswith("torch.ao.nn.quantized")
        assert len(solo(server, *answer(0))) == FRAMES
    finally:
        server.close()


def test_a_closed_server_refuses_and_ends_answers(tiny_parler_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = make_server(tiny_parler_dir, sample=True)
    assert server.max_streams == 8
    server.close()
    with pytest.raises(TTSError, match="closed"):
        list(server.stream("Yes.", VOICES[0]))


class Fatal(BaseException):
    """A failure no `except Exception` catches (as a thread's unexpected exit would be)."""


def fail_once(original: Callable[..., Any], gate: threading.Event, error: BaseException) -> Callable[..., Any]:
    """`original`, except that its first call after `gate` is set raises `error`."""
    errors = [error]

    def call(*args: Any) -> Any:
        if gate.is_set() and errors:
            raise errors.pop()
        return original(*args)

    return call


@pytest.mark.parametrize(
    ("part", "error"),
    [("runner", Fatal("step fault")), ("_admit", RuntimeError("admission fault"))],
    ids=["step-raises-base-exception", "admission-raises"],
)
def test_a_failure_of_the_loop_ends_its_answers_and_the_loop_starts_again(
    part: str, error: BaseException, greedy: SpeechServer, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, voice = answer(2)
    expected = solo(greedy, text, voice)
    gate = threading.Event()
    monkeypatch.setattr(greedy.loop, part, fail_once(getattr(greedy.loop, part), gate, error))
    runs = [start(pool, greedy, text, voice) for _ in range(2)]
    for run in runs:
        assert run.codes.started.wait(WAIT)
    gate.set()
    for run in runs:  # every answer in flight ends, none waits forever
        assert isinstance(run.result().error, TTSError)
        assert str(error) in str(run.error)
    assert torch.equal(solo(greedy, text, voice), expected)  # the loop serves again, not "closed"
    assert greedy.health().ok and greedy.loop.failures == 0


def test_steps_failing_in_a_row_make_the_server_unhealthy_until_one_succeeds(
    greedy: SpeechServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = greedy.loop.runner

    def sticky(*args: Any) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(greedy.loop, "runner", sticky)
    for _ in range(3):
        assert greedy.health().ok
        with pytest.raises(TTSError, match="illegal memory access"):
            solo(greedy, *answer(0))
    assert greedy.health().problem == "the last 3 speech decoding steps failed"
    monkeypatch.setattr(greedy.loop, "runner", step)
    solo(greedy, *answer(0))
    assert greedy.health().ok


def test_a_codec_worker_failure_outside_a_decode_ends_its_answers_and_the_worker_goes_on(
    greedy: SpeechServer, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, voice = answer(1)
    gate = threading.Event()
    worker = greedy.codec
    monkeypatch.setattr(worker, "_decode_next", fail_once(worker._decode_next, gate, Fatal("codec thread fault")))
    gate.set()
    run = start(pool, greedy, text, voice)
    assert isinstance(run.result().error, TTSError)
    assert "codec thread fault" in str(run.error)
    assert greedy.synthesize(text, voice).size == len(solo(greedy, text, voice)) * HOP  # the worker is alive
    assert greedy.health().ok


def test_a_codec_decode_raising_base_exception_ends_its_request_only() -> None:
    def decode(codes: torch.Tensor) -> list[np.ndarray]:
        if int(codes[0, 0, 0]) == 1:
            raise Fatal("decode fault")
        return silent_decode(codes)

    worker = CodecWorker(decode, max_batch=1)
    first: list[Any] = []
    second: list[Any] = []
    aborted = threading.Event()
    worker.submit(block(1), first.append, aborted.set)
    worker.send("end", first.append)
    worker.submit(block(2), second.append, lambda: None)
    worker.send("end", second.append)
    assert worker.close()
    assert aborted.is_set() and isinstance(first[0], Fatal)
    assert isinstance(second[0], np.ndarray) and second[-1] == "end"


def test_a_stuck_codec_ends_the_waiting_answers_and_makes_the_server_unhealthy(
    tiny_parler_dir: Path, pool: ThreadPoolExecutor
) -> None:
    codec = GatedCodec()
    server = SpeechServer.load(
        tiny_config(tiny_parler_dir, max_batch=2), frames_per_sentence=FRAMES, decode=codec, stall_s=1.0
    )
    try:
        run = start(pool, server, *answer(0))
        assert codec.busy.wait(WAIT)  # the first decode never returns while the gate is shut
        assert isinstance(run.result().error, TTSError)
        assert "codec call has been running" in str(run.error)
        assert not server.health().ok and "codec" in server.health().problem
        server.close(timeout=0.5)  # bounded although the codec is stuck
        codec.release.set()
        assert server.codec.close()  # the stuck call returned: the worker stops
    finally:
        codec.release.set()
        server.close()


def test_a_hung_decoding_step_ends_the_waiting_answers_until_it_returns(
    tiny_parler_dir: Path, pool: ThreadPoolExecutor
) -> None:
    server = SpeechServer.load(
        tiny_config(tiny_parler_dir, max_batch=2), frames_per_sentence=FRAMES, decode=silent_decode, stall_s=1.0
    )
    step, hung, release = server.loop.runner, threading.Event(), threading.Event()

    def hanging(*args: Any) -> torch.Tensor:
        if not release.is_set():
            hung.set()
            assert release.wait(WAIT)
        return step(*args)

    server.loop.runner = hanging
    try:
        run = start(pool, server, *answer(0))
        assert hung.wait(WAIT)
        assert isinstance(run.result().error, TTSError)
        assert "decoding step has been running" in str(run.error)
        assert "decoding step" in server.health().problem
        release.set()
        assert len(solo(server, *answer(0))) == FRAMES  # the step returned: the server serves again
        assert server.health().ok
    finally:
        release.set()
        server.close()


def test_answers_ended_by_close_are_not_decoded_any_further(tiny_parler_dir: Path, pool: ThreadPoolExecutor) -> None:
    codec = GatedCodec()
    server = SpeechServer.load(tiny_config(tiny_parler_dir, max_batch=2), frames_per_sentence=FRAMES, decode=codec)
    submitted: list[Any] = []
    submit, step = server.codec.submit, server.loop.runner
    holding, hold = threading.Event(), threading.Event()

    def counted(*args: Any) -> None:
        submit(*args)
        submitted.append(args[0])

    def held(*args: Any) -> torch.Tensor:
        if len(submitted) >= 3:  # the answer is in flight with blocks queued behind the one being decoded
            holding.set()
            assert hold.wait(WAIT)
        return step(*args)

    server.codec.submit = counted  # type: ignore[method-assign]
    server.loop.runner = held
    try:
        run = start(pool, server, " ".join(SENTENCES[:3]), VOICES[0])
        assert holding.wait(WAIT) and codec.busy.is_set()
        closing = pool.submit(server.loop.close)
        deadline = time.monotonic() + WAIT
        while not server.loop._closed and time.monotonic() < deadline:  # close() has begun: the loop ends soon
            threading.Event().wait(0.01)
        hold.set()
        assert closing.result(WAIT)
        codec.release.set()
        assert server.codec.close()
        assert isinstance(run.result().error, TTSError) and "closed" in str(run.error)
        assert len(run.chunks) == 1 and len(codec.calls) == 1  # the queued blocks were dropped, not decoded
    finally:
        hold.set()
        codec.release.set()
        server.close()


class Counted(list[torch.Tensor]):
    """A request's frame codes, with an event set once `count` frames are there."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count, self.reached = count, threading.Event()

    def append(self, frame: torch.Tensor) -> None:
        super().append(frame)
        if len(self) >= self.count:
            self.reached.set()


def test_closing_ends_answers_without_decoding_their_remaining_audio(
    tiny_parler_dir: Path, pool: ThreadPoolExecutor
) -> None:
    codec = GatedCodec()
    server = make_server(tiny_parler_dir, sample=False, decode=codec)
    codes = Counted(2 * FRAMES)  # two sentences: several blocks wait behind the held first one
    consumer = pool.submit(lambda: list(server.stream(" ".join(SENTENCES), VOICES[0], codes=codes)))
    assert codec.busy.wait(WAIT) and codes.reached.wait(WAIT)
    server.loop.close()  # what `close()` does first; the codec is still inside its first call
    codec.release.set()
    server.codec.close()
    with pytest.raises(TTSError, match="closed"):
        consumer.result(WAIT)
    assert len(codec.calls) == 1  # the blocks queued behind it were dropped, not decoded
