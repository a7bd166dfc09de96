"""Streaming Parler-TTS: text + voice → float32 mono chunks at the codec's sample rate, as they are generated.

The decoder predicts the codec's codebooks with a delay pattern (codebook k lags k steps), so a frame is complete
`num_codebooks - 1` steps after its first code. `_CodecStreamer` undoes the pattern step by step and
`_FrameDecoder` decodes each block of new frames with a bounded window of neighbouring frames, cropped to the
new samples: codec work is linear in the answer's length, and the chunks join into the same signal as one full
decode. Requests run one at a time on the single model; `SpeechScheduler` queues them fairly for asyncio code.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import queue
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from parler_tts.logits_processors import ParlerTTSLogitsProcessor
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

JENNY_DESCRIPTION = (
    "Jenny speaks at an average pace with a calm delivery in a very confined sounding environment "
    "with clear audio quality."
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class TTSConfig:
    """Model and streaming settings.

    `device`/`dtype` "auto": cuda, mps or cpu; bf16/fp16 on GPUs, fp32 on CPU. The first chunk of an answer lasts
    `first_chunk_s`, the next ones double up to `chunk_s`; each is decoded with `context_frames` codec frames of
    context on both sides (8 frames ≈ 93 ms of extra latency, about 70 dB match with a full decode).
    """

    model: str = "parler-tts/parler-mini-v1-jenny"
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    first_chunk_s: float = 0.25
    chunk_s: float = 1.0
    context_frames: int = 8
    queue_size: int = 16


@dataclass(frozen=True)
class Voice:
    """A speaker: Parler's natural-language description plus the sampling seed that fixes the timbre."""

    description: str
    seed: int = 42


DEFAULT_VOICE = Voice(JENNY_DESCRIPTION)


class TTSError(Exception):
    """Speech generation failed."""


class TTSQueueFull(Exception):
    """Too many answers are waiting to be spoken."""


class AudioCodesOnly(LogitsProcessor):
    """Forbid every id outside the codebook, EOS included: random-weight models then generate exact lengths."""

    def __init__(self, codebook_size: int) -> None:
        self.codebook_size = codebook_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.codebook_size :] = -math.inf
        return scores


def split_sentences(text: str) -> list[str]:
    """Split an answer at sentence ends so the first sentence can be spoken while the rest is generated."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → bf16 on CUDA (fp16 where bf16 is missing), fp16 on MPS, fp32 on CPU."""
    if name != "auto":
        try:
            return _DTYPES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)} or 'auto'") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def to_pcm(audio: torch.Tensor) -> np.ndarray:
    """Codec output → float32 mono samples in [-1, 1]. A fixed limiter, never a per-chunk normalisation."""
    samples = audio.detach().float().reshape(-1).cpu().numpy()
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for one request without disturbing the process's random state outside it."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


class _GenerationStopped(Exception):
    """Raised from the streamer to leave `generate()`: cancelled, or finished (skips its full re-decode)."""


class _FrameDecoder:
    """Decodes a growing frame sequence in blocks, each with up to `context` frames of context on both sides."""

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], context: int, sizes: Iterator[int]) -> None:
        self._decode = decode
        self._context = context
        self._sizes = sizes
        self._frames: list[torch.Tensor] = []
        self._done = 0
        self._target = next(sizes)

    def add(self, frame: torch.Tensor) -> np.ndarray | None:
        """Append one complete frame; return audio once the next block and its right context are there."""
        self._frames.append(frame)
        if len(self._frames) - self._done < self._target + self._context:
            return None
        return self._emit(self._done + self._target)

    def flush(self) -> np.ndarray | None:
        """Audio for the frames not yet emitted (end of the sentence)."""
        return self._emit(len(self._frames)) if len(self._frames) > self._done else None

    def _emit(self, end: int) -> np.ndarray:
        start = self._done
        lo, hi = max(0, start - self._context), min(len(self._frames), end + self._context)
        audio = self._decode(torch.stack(self._frames[lo:hi], dim=-1))
        hop = audio.shape[-1] // (hi - lo)
        self._done, self._target = end, next(self._sizes)
        return audio[(start - lo) * hop : (end - lo) * hop]


class _CodecStreamer(BaseStreamer):
    """Receives each step's codes from `generate()`, rebuilds complete frames and emits decoded chunks."""

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        frames: _FrameDecoder,
        emit: Callable[[np.ndarray], None],
        cancel: threading.Event,
    ) -> None:
        self._codebook_size = codebook_size
        self._frames = frames
        self._emit = emit
        self._cancel = cancel
        # The last `num_codebooks` steps; once full, their diagonal is the frame that just became complete.
        self._window: deque[torch.Tensor] = deque(maxlen=num_codebooks)

    def put(self, value: torch.Tensor) -> None:
        if self._cancel.is_set():
            raise _GenerationStopped
        if value.ndim == 2:  # the decoder's start column (BOS), sent once before the first step
            return
        self._window.append(value.reshape(-1))
        if len(self._window) < self._window.maxlen:
            return
        frame = torch.stack(tuple(self._window)).diagonal()
        if bool((frame < self._codebook_size).all()):  # frames holding EOS/padding are not audio
            self._send(self._frames.add(frame))

    def end(self) -> None:
        self._send(self._frames.flush())
        raise _GenerationStopped

    def _send(self, chunk: np.ndarray | None) -> None:
        if chunk is not None and chunk.size:
            self._emit(chunk)


_END = object()


class TTSEngine:
    """The process's Parler-TTS model with a streaming interface. Requests run one at a time."""

    _loaded: ClassVar[dict[tuple[TTSConfig, int | None], TTSEngine]] = {}
    _load_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        config: TTSConfig,
        model: ParlerTTSForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        frames_per_sentence: int | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.frames_per_sentence = frames_per_sentence
        codec = model.config.audio_encoder
        self.sample_rate: int = codec.sampling_rate
        self.frame_rate: float = codec.frame_rate
        self._codebook_size: int = codec.codebook_size
        self._num_codebooks: int = model.decoder.config.num_codebooks
        self._lock = threading.Lock()

    @classmethod
    def load(cls, config: TTSConfig, *, frames_per_sentence: int | None = None) -> TTSEngine:
        """Load (once per process and config) through `from_pretrained`, as on a user's machine. Blocking.

        `frames_per_sentence` is for tests and benchmarks with random weights: it masks every non-audio id and
        generates exactly that many codec frames per sentence.
        """
        key = (config, frames_per_sentence)
        with cls._load_lock:
            if key not in cls._loaded:
                device = resolve_device(config.device)
                model = ParlerTTSForConditionalGeneration.from_pretrained(
                    config.model,
                    torch_dtype=resolve_dtype(config.dtype, device),
                    # T5 has no SDPA/flash kernels in transformers 4.46: the choice applies to the decoder only.
                    attn_implementation={"decoder": config.attn_implementation, "text_encoder": "eager"},
                ).to(device)
                tokenizer = AutoTokenizer.from_pretrained(config.model)
                cls._loaded[key] = cls(config, model, tokenizer, frames_per_sentence)
            return cls._loaded[key]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate_kwargs(self, text: str, voice: Voice) -> dict[str, Any]:
        """Keyword arguments for `model.generate` (no streamer) for one sentence; benchmarks reuse them."""
        description = self.tokenizer(voice.description, return_tensors="pt").to(self.device)
        prompt = self.tokenizer(text, return_tensors="pt").input_ids.to(self.device)
        processors: list[LogitsProcessor] = [
            ParlerTTSLogitsProcessor(self.model.generation_config.eos_token_id, self._num_codebooks, 1, self.device)
        ]
        if self.frames_per_sentence is None:
            lengths = {"min_new_tokens": 10}
        else:
            processors.append(AudioCodesOnly(self._codebook_size))
            steps = self.frames_per_sentence + self._num_codebooks - 1
            lengths = {"min_new_tokens": steps, "max_new_tokens": steps}
        return {
            "input_ids": description.input_ids,
            "attention_mask": description.attention_mask,
            "prompt_input_ids": prompt,
            "logits_processor": LogitsProcessorList(processors),
            "do_sample": True,
            "temperature": 1.0,
            **lengths,
        }

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks as they are generated, sentence by sentence.

        Setting `cancel` (or closing the iterator) stops generation within one decoding step. A failure in
        generation is raised here as `TTSError`.
        """
        cancel = cancel if cancel is not None else threading.Event()
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        worker = threading.Thread(
            target=self._produce, args=(split_sentences(text), voice, cancel, chunks.put), daemon=True
        )
        worker.start()
        try:
            while (item := chunks.get()) is not _END and not cancel.is_set():
                if isinstance(item, BaseException):
                    raise TTSError(f"speech generation failed: {item}") from item
                yield item
        finally:
            if worker.is_alive():
                cancel.set()

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """The whole answer as one array (voice messages, CLI)."""
        return np.concatenate([np.zeros(0, np.float32), *self.stream(text, voice)])

    def _produce(self, sentences: list[str], voice: Voice, cancel: threading.Event, put: Callable[[Any], None]) -> None:
        try:
            with self._lock:
                for index, sentence in enumerate(sentences):
                    if cancel.is_set():
                        break
                    first_s = self.config.first_chunk_s if index == 0 else self.config.chunk_s
                    self._generate(sentence, voice, cancel, put, first_s)
        except BaseException as exc:  # the consumer must hear of every failure, or it would wait forever
            put(exc)
        else:
            put(_END)

    def _generate(
        self,
        sentence: str,
        voice: Voice,
        cancel: threading.Event,
        emit: Callable[[np.ndarray], None],
        first_s: float,
    ) -> None:
        # Chunks double up to `chunk_s`: each is generated while the audio before it plays.
        seconds = (min(self.config.chunk_s, first_s * 2**i) for i in itertools.count())
        frames = (max(1, round(s * self.frame_rate)) for s in seconds)
        decoder = _FrameDecoder(self._decode, self.config.context_frames, frames)
        streamer = _CodecStreamer(self._num_codebooks, self._codebook_size, decoder, emit, cancel)
        with _seeded(voice.seed, self.device), suppress(_GenerationStopped):
            self.model.generate(**self.generate_kwargs(sentence, voice), streamer=streamer)

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        """Decode `(num_codebooks, frames)` codes with the codec."""
        codes = codes.to(self.model.audio_encoder.device)[None, None]  # (chunks, batch, codebooks, frames)
        if not self.model.use_4dim_audio_codes:
            codes = codes[0]
        scales = {"audio_scales": [None]} if self.model.use_audio_scales else {}
        with torch.inference_mode():
            return to_pcm(self.model.audio_encoder.decode(audio_codes=codes, **scales).audio_values)


class SpeechEngine(Protocol):
    """What `SpeechScheduler` needs from an engine."""

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]: ...


@dataclass(eq=False)
class _Job:
    key: Hashable
    text: str
    voice: Voice
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    chunks: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def deliver(self, item: Any) -> None:
        """Hand a chunk, `_END` or an exception to the consumer (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancel.set()


class SpeechStream(AsyncIterator[np.ndarray]):
    """Chunks of one queued answer. `aclose()` or cancelling the consuming task cancels generation."""

    def __init__(self, job: _Job, scheduler: SpeechScheduler) -> None:
        self._job = job
        self._scheduler = scheduler
        self._finished = False

    async def __anext__(self) -> np.ndarray:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._job.chunks.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if item is _END or isinstance(item, BaseException):
            self._finished = True
            if isinstance(item, BaseException):
                raise item
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._finished = True
        self._job.cancel.set()
        self._scheduler.discard(self._job)


class SpeechScheduler:
    """Runs answers one at a time on the engine, round-robin between keys (guild ids), with a bounded queue."""

    def __init__(self, engine: SpeechEngine, queue_size: int = 16) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._waiting: dict[Hashable, deque[_Job]] = {}
        self._last_turn: dict[Hashable, int] = {}
        self._turns = itertools.count()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Answers queued and not started."""
        return sum(len(jobs) for jobs in self._waiting.values())

    def stream(self, key: Hashable, text: str, voice: Voice) -> SpeechStream:
        """Queue an answer for `key`; raises `TTSQueueFull` when `queue_size` answers are already waiting."""
        if self.waiting >= self._queue_size:
            raise TTSQueueFull(
                f"The speech queue is full ({self._queue_size} answers waiting). Please try again in a moment."
            )
        job = _Job(key, text, voice, asyncio.get_running_loop())
        self._waiting.setdefault(key, deque()).append(job)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="speech-scheduler")
        return SpeechStream(job, self)

    def discard(self, job: _Job) -> None:
        """Forget a job that has not started."""
        jobs = self._waiting.get(job.key)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._waiting[job.key]

    async def close(self) -> None:
        """Stop the worker; every waiting or running answer ends with `TTSError`."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for jobs in self._waiting.values():
            for job in jobs:
                job.deliver(TTSError("the speech scheduler was closed"))
        self._waiting.clear()

    def _next_job(self) -> _Job | None:
        """The oldest job of the key whose last turn is the longest ago (new keys first)."""
        if not self._waiting:
            return None
        key = min(self._waiting, key=lambda k: self._last_turn.get(k, -1))
        self._last_turn[key] = next(self._turns)
        jobs = self._waiting[key]
        job = jobs.popleft()
        if not jobs:
            del self._waiting[key]
        return job

    async def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await asyncio.to_thread(self._play, job)
            except asyncio.CancelledError:
                job.cancel.set()
                job.deliver(TTSError("the speech scheduler was closed"))
                raise

    def _play(self, job: _Job) -> None:
        """Worker thread: run one answer on the engine and forward its chunks."""
        try:
            for chunk in self._engine.stream(job.text, job.voice, job.cancel):
                job.deliver(chunk)
        except TTSError as exc:
            job.deliver(exc)
        except Exception as exc:
            error = TTSError(f"speech generation failed: {exc}")
            error.__cause__ = exc
            job.deliver(error)
        else:
            job.deliver(_END)
