"""The serving engine: many answers decoded in one batch by the decoding loop, audio decoded off its thread.

`SpeechServer.load` loads the model like the reference engine, folds the codec's weight normalisation, gives the
decoder the CPU path measured fastest on this processor (`cpu_path`: fp32, oneDNN-packed, int8 or bf16), and on
CUDA captures the decoder step as CUDA graphs before returning, so the bot keeps answering in text until the voice
is warm.
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
from audio.speech.graphs import CudaGraphs
from audio.speech.loop import END, DecodingLoop, Request, Runner
from audio.speech.parler import decode_batch, fold_weight_norm, load_parler
from audio.speech.rules import Rules
from audio.speech.slots import batch_buckets, length_buckets
from audio.speech.voice import TTSConfig, TTSError, Voice, split_sentences, synthesize

log = logging.getLogger(__name__)

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
        decode: Callable[[torch.Tensor], list[np.ndarray]] | None = None,
    ) -> None:
        """`decode` replaces the codec call ((batch, codebooks, frames) → samples), e.g. to time the decoder alone."""
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
        runner: Runner | None = None
        if cuda_graphs if cuda_graphs is not None else device.type == "cuda":
            batches = batch_buckets(self.max_streams)
            runner = CudaGraphs(self.decoder, batches, length_buckets(self.decoder.cache.length)).warm_up()
        codec_batch = self.max_streams if device.type == "cuda" else 1
        self.codec = CodecWorker(decode or codec_call(model), max_batch=codec_batch)
        self.loop = DecodingLoop(
            self.decoder,
            tokenizer,
            self.rules,
            self.codec,
            config,
            max_batch=self.max_streams,
            prompt_tokens=PROMPT_TOKENS,
            runner=runner,
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
        `TTSError`. `codes`, when given, receives each audio frame's codec ids.
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
                item = chunks.get()
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

    def close(self) -> None:
        """Stop the loop and the codec worker; answers in flight end with `TTSError`."""
        self.loop.close()
        self.codec.close()
