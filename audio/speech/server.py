"""The serving engine: many answers decoded in one batch by the decoding loop, audio decoded off its thread.

`SpeechServer.load` loads the model like the reference engine, folds the codec's weight normalisation, gives the
decoder the CPU path measured fastest on this processor (`cpu_path`: fp32, oneDNN-packed, int8 or bf16), and on
CUDA captures the decoder step as CUDA graphs before returning, so the bot keeps answering in text until the voice
is warm.

`health()` reports a decoding loop or codec call that hangs, or steps that keep failing (a device in a sticky
error); an answer waiting on a hung engine ends with `TTSError` instead of waiting forever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from transformers import PreTrainedTokenizerBase

from audio.speech.codec import CodecWorker
from audio.speech.cpu_path import PathChoice, choose_cpu_path
from audio.speech.decoder import ParlerDecoder
from audio.speech.graphs import Capture, CudaGraphs
from audio.speech.loop import END, DecodingLoop, Request
from audio.speech.parler import decode_batch, fold_weight_norm, load_parler
from audio.speech.rules import Rules
from audio.speech.slots import batch_buckets, length_buckets
from audio.speech.voice import EngineHealth, TTSConfig, TTSError, Voice, split_sentences, synthesize

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often an answer waiting for audio checks that the engine is not hung

PROMPT_TOKENS = 256
"""The longest sentence prompt, in tokens (longer sentences fail with `TTSError`)."""
DESCRIPTION_TOKENS = 256
"""The longest voice description, in tokens."""
CPU_MAX_BATCH = 8
"""Answers per batch on CPU when `max_batch` is not set."""


def codec_call(model: ParlerTTSForConditionalGeneration) -> Callable[[torch.Tensor], list[np.ndarray]]:
    """The model's codec for the worker thread; on CUDA on a stream of its own, beside the decoder's steps."""
    if model.device.type != "cuda":
        return lambda codes: decode_batch(model, codes)
    stream = torch.cuda.Stream(model.device)

    def decode(codes: torch.Tensor) -> list[np.ndarray]:
        # `codes` were stacked on the calling thread's stream: wait for them, and keep their memory from being
        # reused by that stream while the codec stream still reads it.
        stream.wait_stream(torch.cuda.current_stream(model.device))
        codes.record_stream(stream)
        with torch.cuda.stream(stream):
            return decode_batch(model, codes)

    return decode


class SpeechServer:
    """Parler-TTS serving up to `max_streams` answers at once; implements `SpeechEngine`."""

    def __init__(
        self,
        config: TTSConfig,
        model: ParlerTTSForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        *,
        frames_per_sentence: int | None = None,
        do_sample: bool = True,
        cuda_graphs: bool | None = None,
        capture: Capture | None = None,
        decode: Callable[[torch.Tensor], list[np.ndarray]] | None = None,
        stall_s: float = 30.0,
    ) -> None:
        """`decode` replaces the codec call ((batch, codebooks, frames) → samples), e.g. to time the decoder alone.
        A decoding step or codec call running longer than `stall_s` seconds counts as hung.

        The step runs as graphs when `cuda_graphs` is true (default: on CUDA devices) or a `capture` is given (a
        stand-in for CUDA graphs, to drive the graph path on a CPU)."""
        self.config = config
        self.model = model
        device = model.device
        self.max_streams: int = config.max_batch or (32 if device.type == "cuda" else CPU_MAX_BATCH)
        self.cpu_path: PathChoice | None = None
        """What `load` chose for the CPU decoder (`audio.speech.cpu_path`)."""
        codec = model.config.audio_encoder
        self.sample_rate: int = codec.sampling_rate
        self.frame_rate: float = codec.frame_rate
        self.rules = Rules.of(
            model, frames_per_sentence=frames_per_sentence, max_frames=config.max_frames, do_sample=do_sample
        )
        self.decoder = ParlerDecoder(
            model, rows=self.max_streams, length=PROMPT_TOKENS + self.rules.max_length, context=DESCRIPTION_TOKENS
        )
        self.graphs: CudaGraphs | None = None
        if capture is not None or (cuda_graphs if cuda_graphs is not None else device.type == "cuda"):
            batches, lengths = batch_buckets(self.max_streams), length_buckets(self.decoder.cache.length)
            self.graphs = CudaGraphs(self.decoder, batches, lengths, capture).warm_up()
        codec_batch = self.max_streams if device.type == "cuda" else 1
        self.codec = CodecWorker(decode or codec_call(model), max_batch=codec_batch, stall_s=stall_s)
        self.loop = DecodingLoop(
            self.decoder,
            tokenizer,
            self.rules,
            self.codec,
            config,
            max_batch=self.max_streams,
            prompt_tokens=PROMPT_TOKENS,
            runner=self.graphs,
            stall_s=stall_s,
        )

    @classmethod
    def load(cls, config: TTSConfig, **options: Any) -> SpeechServer:
        """Load through `from_pretrained` and prepare the model for serving (blocking; see the module docstring).

        `options` go to the constructor (`frames_per_sentence` for random-weight models in tests and benchmarks).
        """
        model, tokenizer = load_parler(config)
        folded = fold_weight_norm(model.audio_encoder)
        path = choose_cpu_path(model, config, max_batch=config.max_batch or CPU_MAX_BATCH)
        log.info("Speech model loaded on %s (%d codec convolutions folded)", model.device, folded)
        if model.device.type == "cpu":
            log.info("%s", path.describe())
        server = cls(config, model, tokenizer, **options)
        server.cpu_path = path
        return server

    @property
    def device(self) -> torch.device:
        return self.model.device

    def stream(
        self,
        text: str,
        voice: Voice,
        cancel: threading.Event | None = None,
        *,
        codes: list[torch.Tensor] | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks, sentence by sentence, as the batch produces them.

        Setting `cancel` (or closing the iterator) frees the answer's row within one step. Failures raise
        `TTSError`, and so does a hung engine (see `health()`). `codes`, when given, receives each audio frame's
        codec ids.
        """
        cancel = cancel if cancel is not None else threading.Event()
        sentences = split_sentences(text)
        if not sentences:
            return
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request = Request(sentences, voice, cancel, chunks.put, codes)
        self.loop.submit(request)
        try:
            while not cancel.is_set():
                try:
                    item = chunks.get(timeout=_POLL_S)
                except queue.Empty:
                    if problem := self._stuck():
                        raise TTSError(problem) from None
                    continue
                if item is END:
                    return
                if isinstance(item, TTSError):
                    raise item
                if isinstance(item, BaseException):
                    raise TTSError(f"speech generation failed: {item}") from item
                yield item
        finally:
            if not request.stopped:
                cancel.set()

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """The whole answer as one array (voice messages, CLI)."""
        return synthesize(self, text, voice)

    def health(self) -> EngineHealth:
        """Hung (a step or codec call past `stall_s`, a stopped thread), failing (steps failing in a row), or ok."""
        return EngineHealth(self._stuck() or self.loop.failing())

    def _stuck(self) -> str:
        return self.loop.stuck() or self.codec.stuck()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and the codec worker, waiting at most `timeout` seconds for each (a hung device is left
        behind); answers in flight end with `TTSError`."""
        self.loop.close(timeout)
        self.codec.close(timeout)
