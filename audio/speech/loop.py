"""The decoding loop: continuous batching of sentences over the rows of a static cache, on one thread.

Each answer (`Request`) holds one row from its first prefill to its last frame, sentence after sentence. A new
request is prefilled alone into the next free row between two steps and joins the batch at the next step; a
finished, cancelled or failed one leaves at once and the last row moves into its place, so the batch stays packed.
Frames go to the codec worker in blocks; the loop never waits for audio.

Nothing stops the loop but `close()`: a failure of the loop itself (any exception, even a `BaseException`) ends
every answer it holds with `TTSError` and the loop starts again. `stuck()` and `failing()` say what is wrong.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from audio.speech.codec import CodecWorker, FrameBlocks, WorkerThread, chunk_frames
from audio.speech.decoder import ParlerDecoder
from audio.speech.rules import Rules
from audio.speech.slots import VoiceCache, VoiceContext, batch_buckets, bucket, length_buckets
from audio.speech.voice import TTSConfig, TTSError, Voice

log = logging.getLogger(__name__)

END = object()
"""Sent to a request's sink after its last chunk."""
FAILURES_UNHEALTHY = 3
"""Failed steps or loop failures in a row (no good step between them) that make the loop unhealthy."""
RESTART_S = (0.05, 5.0)
"""The pause before the loop starts again after a failure: the first one, doubling up to the second."""

Runner = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]
"""`(tokens (B, codebooks), positions (B, 1), length, context) → (B, codebooks, vocab)` logits: one batched step."""


@dataclass(eq=False)
class Request:
    """One answer: its sentences, voice, cancel flag and the sink that receives chunks, then `END` or an error.

    `codes`, when given, receives every audio frame's ids (codebooks,) in order (tests and benchmarks).
    """

    sentences: list[str]
    voice: Voice
    cancel: threading.Event
    sink: Callable[[Any], None]
    codes: list[torch.Tensor] | None = None
    failed: bool = False
    ended: bool = False

    @property
    def stopped(self) -> bool:
        """Ended, failed or cancelled: its row is freed before the next step."""
        return self.ended or self.failed or self.cancel.is_set()


@dataclass(eq=False)
class _Row:
    """A request's place in the batch and the state of its current sentence."""

    request: Request
    sentence: int = -1
    prompt_length: int = 0
    context_length: int = 0
    column: int = 0  # index of the column in `tokens`, the next one fed
    tokens: torch.Tensor | None = None
    finished: torch.Tensor | None = None
    first_open: int = 0
    generator: torch.Generator | None = None
    recent: deque[torch.Tensor] = field(default_factory=deque)
    blocks: FrameBlocks | None = None

    @property
    def written(self) -> int:
        """Cached self-attention positions."""
        return self.prompt_length + self.column


class DecodingLoop:
    """Serves requests on `decoder` with `rules`, up to `max_batch` rows at once, on its own thread."""

    def __init__(
        self,
        decoder: ParlerDecoder,
        tokenizer: PreTrainedTokenizerBase,
        rules: Rules,
        codec: CodecWorker,
        config: TTSConfig,
        *,
        max_batch: int,
        prompt_tokens: int,
        runner: Runner | None = None,
        stall_s: float = 30.0,
    ) -> None:
        """`stall_s`: a step running longer than this makes `stuck()` say so (a device that hangs)."""
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.rules = rules
        self.codec = codec
        self.config = config
        self.capacity = max_batch
        self.runner: Runner = runner or self.eager_step
        self._prompt_tokens = prompt_tokens
        self._frame_rate: float = decoder.model.config.audio_encoder.frame_rate
        self._voices = VoiceCache(self._encode)
        self._batches = batch_buckets(max_batch)
        self._lengths = length_buckets(decoder.cache.length)
        self._contexts = length_buckets(decoder.cache.context, 16)
        self._rows: list[_Row] = []
        self._pending: deque[Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.failures = 0  # failed steps and loop failures since the last good step
        self._thread = WorkerThread(self._run, "speech-decoder", "speech decoding step", stall_s)
        self._thread.start()

    # --- public -------------------------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue `request`; it takes a row as soon as one is free."""
        with self._wake:
            if self._closed:
                raise TTSError("the speech server was closed")
            self._pending.append(request)
            self._wake.notify()

    @property
    def active(self) -> int:
        """Requests holding a row."""
        return len(self._rows)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the loop, waiting at most `timeout` seconds; requests in flight or waiting end with `TTSError`
        (their audio not yet decoded is dropped). False if the loop did not stop in time (a hung step)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        return self._thread.join(timeout)

    def stuck(self) -> str:
        """Why requests given to the loop may never end (a sentence), or "" while it runs."""
        return self._thread.stuck()

    def failing(self) -> str:
        """Why the loop fails every answer now (a sentence: e.g. a device in a sticky error), or ""."""
        if self.failures >= FAILURES_UNHEALTHY:
            return f"the last {self.failures} speech decoding steps failed"
        return ""

    def eager_step(self, tokens: torch.Tensor, positions: torch.Tensor, length: int, context: int) -> torch.Tensor:
        """The graph-free step (static shapes per bucket)."""
        self.decoder.cache.prepare(length, context)
        return self.decoder.step(tokens, positions, length, context)

    # --- the thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._serve()
            except BaseException as exc:  # a failure of the loop itself: nobody may wait forever, so it restarts
                log.exception("The speech decoding loop failed; the answers it held end and it starts again")
                self.failures += 1
                self._end_all(TTSError(f"speech generation failed: {exc}"))
            pause = min(RESTART_S[1], RESTART_S[0] * 2 ** min(20, max(0, self.failures - 1)))
            with self._wake:
                closed = self._wake.wait_for(lambda: self._closed, timeout=pause)
            if closed:
                self._end_all(TTSError("the speech server was closed"))
                return

    def _end_all(self, error: TTSError) -> None:
        """End every request waiting or holding a row with `error`; their audio not yet decoded is dropped."""
        with self._wake:
            pending, self._pending = list(self._pending), deque()
        for request in [*pending, *(row.request for row in self._rows)]:
            if request.ended:  # finished, its row not freed yet
                self.codec.send(END, request.sink)
            elif not request.failed:  # cancelled ones too: their consumers may be waiting
                self._fail(request, error)  # failed: the codec drops its blocks not yet decoded
        self._rows.clear()

    def _serve(self) -> None:
        with torch.inference_mode():
            while True:
                with self._thread.working():
                    self._release_stopped()
                if (admitted := self._admit()) is None:
                    break
                with self._thread.working():
                    for request in admitted:
                        self._rows.append(_Row(request))
                        self._next_sentence(len(self._rows) - 1)
                    self._release_stopped()
                    if self._rows:
                        self._step()

    def _admit(self) -> list[Request] | None:
        """Wait for work; take waiting requests into free rows. None once closed."""
        with self._wake:
            while not self._closed and not self._rows and not self._pending:
                self._wake.wait()
            if self._closed:
                return None
            for request in [r for r in self._pending if r.stopped]:  # cancelled while waiting, rows free or not
                self._pending.remove(request)
                self.codec.send(END, request.sink)
            admitted: list[Request] = []
            while self._pending and len(self._rows) + len(admitted) < self.capacity:
                admitted.append(self._pending.popleft())
            return admitted

    def _step(self) -> None:
        """One batched step of every row; a failure here fails every request in flight."""
        rows = self._rows
        n = len(rows)
        size = bucket(n, self._batches)
        tokens = torch.full(
            (size, self.rules.num_codebooks), self.rules.bos_id, dtype=torch.long, device=self.decoder.device
        )
        positions = torch.zeros(size, 1, dtype=torch.long, device=self.decoder.device)
        tokens[:n] = torch.stack([row.tokens for row in rows])
        positions[:n, 0] = torch.tensor([row.written for row in rows])
        length = bucket(max(row.written for row in rows) + 1, self._lengths)
        context = bucket(max(row.context_length for row in rows), self._contexts)
        try:
            logits = self.runner(tokens, positions, length, context)[:n]
            self._advance(list(range(n)), logits)
        except Exception as exc:
            self.failures += 1
            self._step_failed(exc)
        else:
            self.failures = 0

    def _step_failed(self, exc: Exception) -> None:
        if isinstance(exc, torch.OutOfMemoryError) and self.capacity > 1:
            self.capacity //= 2
            log.warning("Out of memory in a decoding step; serving at most %d answers at once now", self.capacity)
        else:
            log.exception("A decoding step failed; the %d answers in flight end", len(self._rows))
        for row in self._rows:
            self._fail(row.request, exc)
        self._rows.clear()

    def _fail(self, request: Request, error: BaseException) -> None:
        """End `request` with `error`, after the audio already on its way (its consumer raises `TTSError`)."""
        request.failed = True
        self.codec.send(error, request.sink)

    def _advance(self, indices: list[int], logits: torch.Tensor) -> None:
        """Apply the rules to the rows' logits, sample, hand out frames and finish sentences."""
        rows = [self._rows[i] for i in indices]
        device = logits.device
        columns = torch.tensor([row.column for row in rows], device=device)
        finished = torch.stack([row.finished for row in rows])
        first_open = torch.tensor([row.first_open for row in rows], device=device)
        scores, first_open = self.rules.scores(logits, columns, finished, first_open)
        noise = None
        if self.rules.do_sample:
            noise = torch.stack(
                [torch.empty(scores.shape[1:], device=device).exponential_(generator=row.generator) for row in rows]
            )
        chosen = self.rules.choose(scores, noise)
        masked, finished, done = self.rules.close(chosen, columns, finished)
        # One device-to-host copy per step: the new columns, which rows are done, their first open codebooks.
        host = torch.cat([masked, done[:, None].long(), first_open[:, None]], dim=1).cpu()
        codebooks = self.rules.num_codebooks
        for k, (index, row) in enumerate(zip(indices, rows, strict=True)):
            row.tokens, row.finished, row.first_open = masked[k], finished[k], int(host[k, codebooks + 1])
            row.column += 1
            try:
                self._emit(row, host[k, :codebooks])
                if bool(host[k, codebooks]):
                    self._next_sentence(index)
            except Exception as exc:
                log.exception("A speech request failed")
                self._fail(row.request, exc)

    def _emit(self, row: _Row, column: torch.Tensor) -> None:
        """Hand the frame that `column` completes to the codec (frames with an id past the codebook are not audio)."""
        row.recent.append(column)
        if len(row.recent) < self.rules.num_codebooks:
            return
        frame = torch.stack(tuple(row.recent)).diagonal()
        row.recent.popleft()
        if bool((frame < self.rules.codebook_size).all()):
            if row.request.codes is not None:
                row.request.codes.append(frame)
            self._send(row, row.blocks.add(frame))

    def _send(self, row: _Row, block: Any) -> None:
        if block is not None:
            request = row.request
            self.codec.submit(
                block,
                request.sink,
                lambda: setattr(request, "failed", True),
                lambda: request.failed or request.cancel.is_set(),  # nobody hears a failed or cancelled answer
            )

    def _next_sentence(self, index: int) -> None:
        """Close the row's sentence; prefill the next one, or end the request."""
        row = self._rows[index]
        request = row.request
        try:
            if row.blocks is not None:
                self._send(row, row.blocks.flush())
            row.sentence += 1
            if row.sentence == len(request.sentences):
                request.ended = True  # END follows once its row is free, before the next step
                return
            self._prefill(index)
        except Exception as exc:
            log.exception("A speech request failed")
            self._fail(request, exc)

    def _prefill(self, index: int) -> None:
        """Start the row's current sentence: prompt, BOS column and voice context through the decoder."""
        row = self._rows[index]
        request = row.request
        voice = self._voices.get(request.voice.description)
        prompt = self.tokenizer(request.sentences[row.sentence], return_tensors="pt").input_ids
        if prompt.shape[-1] > self._prompt_tokens:
            raise TTSError(f"a sentence is longer than {self._prompt_tokens} tokens")
        decoder, rules = self.decoder, self.rules
        prompt = prompt.to(decoder.device)
        start = torch.full((1, rules.num_codebooks), rules.start_id, dtype=torch.long, device=decoder.device)
        hidden = torch.cat([decoder.prompt(prompt), decoder.embed(start)], dim=1)
        row.prompt_length = prompt.shape[-1]
        row.context_length = voice.length
        row.column = 0
        row.tokens = start[0]
        row.finished = torch.zeros(rules.num_codebooks, dtype=torch.bool, device=decoder.device)
        row.first_open = 0
        row.recent.clear()
        row.generator = torch.Generator(decoder.device).manual_seed(request.voice.seed)
        first_s = self.config.first_chunk_s if row.sentence == 0 else self.config.chunk_s
        row.blocks = FrameBlocks(
            self.config.context_frames, chunk_frames(first_s, self.config.chunk_s, self._frame_rate)
        )
        length = bucket(row.prompt_length + 1, self._lengths)
        context = bucket(voice.length, self._contexts)
        decoder.cache.prepare(length, context)  # before loading: preparing zeroes the newly used region
        decoder.cache.load_voice(index, voice)
        positions = torch.arange(row.prompt_length + 1, device=decoder.device)[None]
        self._advance([index], decoder.forward(hidden, positions, index, length, context))

    def _encode(self, description: str) -> VoiceContext:
        inputs = self.tokenizer(description, return_tensors="pt").to(self.decoder.device)
        if inputs.input_ids.shape[-1] > self.decoder.cache.context:
            raise TTSError(f"the voice description is longer than {self.decoder.cache.context} tokens")
        return self.decoder.encode(inputs.input_ids, inputs.attention_mask)

    def _release_stopped(self) -> None:
        """Free the rows of stopped requests (highest first), moving the last row into each freed place."""
        for index in reversed([i for i, row in enumerate(self._rows) if row.request.stopped]):
            request = self._rows[index].request
            last = len(self._rows) - 1
            if index != last:
                moved = self._rows[last]
                self.decoder.cache.move(last, index, moved.written, moved.context_length)
                self._rows[index] = moved
            self._rows.pop()
            if not request.failed:  # finished or cancelled: END once `active` no longer counts its row
                request.ended = True
                self.codec.send(END, request.sink)
