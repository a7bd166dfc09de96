"""The reference engine: one answer at a time through parler-tts' `model.generate()` with a windowed streamer.

The bot serves speech with the batched decoding loop; this engine stays as the baseline that tests and
benchmarks compare against (same model, same semantics, one request at a time at batch size 1).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any, ClassVar

import numpy as np
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from parler_tts.logits_processors import ParlerTTSLogitsProcessor
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from audio.speech.codec import FrameDecoder, chunk_frames
from audio.speech.parler import AudioCodesOnly, decode_codes, load_parler, seeded
from audio.speech.rules import checkpoint_sampling
from audio.speech.voice import TTSConfig, TTSError, Voice, split_sentences, synthesize


class _GenerationStopped(Exception):
    """Raised from the streamer to leave `generate()`: cancelled, or finished (skips its full re-decode)."""


class _CodecStreamer(BaseStreamer):
    """Receives each step's codes from `generate()`, rebuilds complete frames and emits decoded chunks."""

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        frames: FrameDecoder,
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
    """The process's Parler-TTS model through `generate()`, streamed. Requests run one at a time."""

    max_streams = 1
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
        self._min_new_tokens, self._temperature = checkpoint_sampling(model.generation_config)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, config: TTSConfig, *, frames_per_sentence: int | None = None) -> TTSEngine:
        """Load (once per process and config) through `from_pretrained`. Blocking.

        `frames_per_sentence` is for tests and benchmarks with random weights: it masks every non-audio id and
        generates exactly that many codec frames per sentence.
        """
        key = (config, frames_per_sentence)
        with cls._load_lock:
            if key not in cls._loaded:
                cls._loaded[key] = cls(config, *load_parler(config), frames_per_sentence)
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
            lengths = {"min_new_tokens": self._min_new_tokens}
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
            "temperature": self._temperature,
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
        return synthesize(self, text, voice)

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
        sizes = chunk_frames(first_s, self.config.chunk_s, self.frame_rate)
        decoder = FrameDecoder(self._decode, self.config.context_frames, sizes)
        streamer = _CodecStreamer(self._num_codebooks, self._codebook_size, decoder, emit, cancel)
        with seeded(voice.seed, self.device), suppress(_GenerationStopped):
            self.model.generate(**self.generate_kwargs(sentence, voice), streamer=streamer)

    def _decode(self, codes: torch.Tensor) -> np.ndarray:
        return decode_codes(self.model, codes)
