"""A speech engine on a remote OpenAI-compatible server (`POST /v1/audio/speech`, streamed raw PCM).

Torch-free and Ray-free: the bot can use it on a small CPU machine while the model runs on GPU workers
(`audio.serve`) or on any other OpenAI-compatible speech server. Requests carry `model`, `input`, `voice` (the
preset's description, or a fixed voice name for servers with named voices), `response_format: "pcm"`,
`stream: true` and the extension field `seed`. The answer is 16-bit little-endian mono PCM at the rate of the
`X-Sample-Rate` response header, 24 kHz when it is absent (as OpenAI sends); a stream at another rate than the
engine's `sample_rate` is resampled.

Nothing the server sends is trusted: rates outside 8-192 kHz, redirects (never followed), more audio than the text
can need (`audio_cap_seconds`), an answer that outlasts its total deadline, and error bodies or `Retry-After`
values beyond small bounds all end the answer with a `TTSError` sentence or are cut to their bound.

The HTTP client (aiohttp) runs on the engine's own event loop thread; `stream()` is the blocking iterator the
`SpeechScheduler` expects and hands chunks over as they arrive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from audio.formats import from_pcm16
from audio.speech.voice import TTSError, TTSQueueFull, Voice

log = logging.getLogger(__name__)

OPENAI_SAMPLE_RATE = 24_000
SAMPLE_RATE_HEADER = "X-Sample-Rate"
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000  # the rates accepted from a server or the settings
_POLL_S = 0.02  # how often a waiting `stream()` looks at its cancel event
BUSY_SECONDS = 5.0  # the wait suggested when a busy server sends no Retry-After
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is read as this
MAX_ERROR_BYTES = 4096  # what is read of an error body (its first 300 characters are shown)
MAX_LISTING_BYTES = 1 << 20  # what is read of `/v1/models`
_END = object()


def audio_cap_seconds(text: str) -> float:
    """The most audio an answer to `text` may bring: 5 s plus 1 s per 5 characters (speech runs about 15)."""
    return 5.0 + len(text) / 5


def check_sample_rate(value: object, source: str) -> int:
    """`value` (a header's text or a JSON number) as a rate in 8-192 kHz, else a `TTSError` naming `source`."""
    try:
        rate = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        rate = 0
    if isinstance(value, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise TTSError(
            f"the sample rate in {source} ({str(value)[:20]!r}) is not between {MIN_SAMPLE_RATE} and "
            f"{MAX_SAMPLE_RATE} Hz"
        )
    return rate


def sends_key_in_clear(config: RemoteConfig) -> bool:
    """Whether `config` sends its API key over plain http to a host other than this machine."""
    parts = urlsplit(config.base_url)
    if not config.api_key or parts.scheme != "http":
        return False
    host = parts.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


@dataclass(frozen=True)
class RemoteConfig:
    """Where the speech server is and how to talk to it.

    `sample_rate` None asks the server's `/v1/models` at start-up (the `sample_rate` field of the model's entry,
    which `audio.serve` lists), else assumes OpenAI's 24 kHz. `voice` set sends that name instead of the voice's
    description (servers with named voices). `max_streams` bounds the answers requested at once. `timeout` bounds
    each wait for data; `total_timeout` bounds a whole answer (None: 60 s plus 3 times its `audio_cap_seconds`).
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    sample_rate: int | None = None
    voice: str | None = None
    max_streams: int = 8
    total_timeout: float | None = None

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1")

    def deadline(self, text: str) -> float:
        """Seconds an answer to `text` may take from request to last byte."""
        return self.total_timeout if self.total_timeout is not None else 60.0 + 3 * audio_cap_seconds(text)


class PcmDecoder:
    """s16le bytes → float32 chunks at `target_rate`; keeps an odd trailing byte and the resampler's phase."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self._odd = b""
        self._step = source_rate / target_rate
        self._position = 0.0  # next output sample, in input samples from the start of `_last`
        self._last = np.zeros(0, np.float32)  # the previous chunk's last sample, for interpolation across chunks

    def feed(self, data: bytes) -> np.ndarray:
        data = self._odd + data
        usable = len(data) - len(data) % 2
        self._odd = data[usable:]
        samples = from_pcm16(data)  # the odd byte is left out, kept in `_odd`
        return samples if self._step == 1.0 else self._resample(samples)

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        """Linear interpolation, continuous across chunks."""
        buffer = np.concatenate([self._last, samples])
        if buffer.size < 2:
            self._last = buffer
            return np.zeros(0, np.float32)
        span = buffer.size - 1
        count = max(0, int(np.ceil((span - self._position) / self._step)))
        points = self._position + self._step * np.arange(count)
        out = np.interp(points, np.arange(buffer.size), buffer).astype(np.float32)
        self._position += count * self._step - span
        self._last = buffer[-1:]
        return out


class RemoteEngine:
    """`SpeechEngine` over HTTP: one streamed `POST /v1/audio/speech` per answer."""

    def __init__(self, config: RemoteConfig, sample_rate: int) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.max_streams = config.max_streams
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="remote-speech", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine({self.config.root!r}, model={self.config.model!r}, sample_rate={self.sample_rate})"

    @classmethod
    def connect(cls, config: RemoteConfig) -> RemoteEngine:
        """The engine, with its sample rate from `config` or from the server's `/v1/models`. Blocking.

        Warns when the API key would cross the network in clear text (plain http to another host)."""
        if config.sample_rate is not None:
            check_sample_rate(config.sample_rate, "TTS_SAMPLE_RATE")
        if sends_key_in_clear(config):
            log.warning(
                "TTS_API_KEY is sent over plain http to %s: anyone on the path can read it. "
                "Use https (e.g. a TLS-terminating proxy in front of the speech server) or a private network.",
                config.root,
            )
        engine = cls(config, config.sample_rate or OPENAI_SAMPLE_RATE)
        if config.sample_rate is None:
            try:
                engine.sample_rate = engine._run(engine._probe_sample_rate()).result()
            except BaseException:
                engine.close()
                raise
        return engine

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Yield chunks as they arrive. Setting `cancel` (or closing the iterator) closes the HTTP stream within
        `_POLL_S` plus a loop turn; failures raise `TTSError` with a sentence."""
        cancel = cancel if cancel is not None else threading.Event()
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request = self._run(self._fetch(text, voice, chunks.put))
        try:
            while not cancel.is_set():
                try:
                    item = chunks.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancel()  # cancels the request's task on the loop, which closes the connection

    def close(self) -> None:
        """Close the HTTP session and stop the loop thread."""
        if self._loop.is_closed():
            return
        if self._session is not None:
            self._run(self._session.close()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout, sock_read=self.config.timeout)
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            self._session = aiohttp.ClientSession(
                timeout=timeout, headers=headers, connector=aiohttp.TCPConnector(limit=0)
            )
        return self._session

    async def _probe_sample_rate(self) -> int:
        """The model's `sample_rate` from `/v1/models`, or OpenAI's 24 kHz when the server does not say."""
        url = f"{self.config.root}/v1/models"
        async with self._errors(), self._client().get(url, allow_redirects=False) as response:
            if response.status in (404, 405):
                return OPENAI_SAMPLE_RATE
            await _raise_for_status(response)
            listing = json.loads(await _read_at_most(response, MAX_LISTING_BYTES))
        models = listing.get("data", []) if isinstance(listing, dict) else []
        for model in models:
            if (
                isinstance(model, dict)
                and model.get("id") == self.config.model
                and model.get("sample_rate") is not None
            ):
                return check_sample_rate(model["sample_rate"], "the server's /v1/models")
        return OPENAI_SAMPLE_RATE

    async def _fetch(self, text: str, voice: Voice, put: Callable[[Any], None]) -> None:
        """One answer: POST, then hand each decoded chunk (and finally `_END` or a `TTSError`) to `put`.

        The answer ends with a `TTSError` past its deadline or once it would bring more than `audio_cap_seconds`."""
        deadline = self.config.deadline(text)
        try:
            async with asyncio.timeout(deadline):
                await self._receive(text, voice, put)
        except TimeoutError:
            put(TTSError(f"the speech server at {self.config.root} did not finish the answer in {deadline:g} seconds"))
        except (TTSError, TTSQueueFull) as exc:
            put(exc)
        except Exception as exc:  # anything else (a closed session, a bug): the consumer must still hear of it
            error = TTSError(f"the speech server at {self.config.root} failed: {exc}")
            error.__cause__ = exc
            put(error)
        else:
            put(_END)

    async def _receive(self, text: str, voice: Voice, put: Callable[[Any], None]) -> None:
        """POST the answer's request and hand each decoded chunk to `put`."""
        body = {
            "model": self.config.model,
            "input": text,
            "voice": self.config.voice or voice.description,
            "response_format": "pcm",
            "stream": True,
            "seed": voice.seed,
        }
        cap_s = audio_cap_seconds(text)
        room = int(cap_s * self.sample_rate)  # samples the answer may still bring
        async with self._errors():
            url = f"{self.config.root}/v1/audio/speech"
            response = await self._client().post(url, json=body, allow_redirects=False)
            finished = False
            try:
                await _raise_for_status(response)
                header = response.headers.get(SAMPLE_RATE_HEADER, OPENAI_SAMPLE_RATE)
                rate = check_sample_rate(header, f"the server's {SAMPLE_RATE_HEADER} header")
                decoder = PcmDecoder(rate, self.sample_rate)
                async for data in response.content.iter_any():
                    chunk = decoder.feed(data)
                    room -= chunk.size
                    if room < 0:
                        raise TTSError(
                            f"the speech server sent more than {cap_s:g} seconds of audio "
                            f"for an answer of {len(text)} characters"
                        )
                    if chunk.size:
                        put(chunk)
                finished = True
            finally:
                # A finished answer leaves the connection for the next one; anything else drops it.
                if finished:
                    response.release()
                else:
                    response.close()

    def _errors(self) -> _ErrorSentences:
        return _ErrorSentences(self.config.root, self.config.timeout)


class _ErrorSentences:
    """Turns aiohttp's failures into `TTSError`s with a sentence (async context manager)."""

    def __init__(self, root: str, timeout: float) -> None:
        self._root = root
        self._timeout = timeout

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, (TTSError, asyncio.CancelledError)) or not isinstance(exc, Exception):
            return
        if isinstance(exc, TimeoutError):
            sentence = f"the speech server at {self._root} sent nothing for {self._timeout:g} seconds"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            sentence = f"the speech server at {self._root} cannot be reached ({exc.os_error.strerror or exc})"
        elif isinstance(exc, aiohttp.ClientPayloadError):
            sentence = f"the speech server at {self._root} stopped in the middle of an answer"
        elif isinstance(exc, (aiohttp.ClientError, ValueError)):
            sentence = f"the speech server at {self._root} failed: {exc}"
        else:
            return
        raise TTSError(sentence) from exc


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body's first `limit` bytes (the rest is never read)."""
    data = b""
    while len(data) < limit and (part := await response.content.read(limit - len(data))):
        data += part
    return data


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    """A `TTSError` naming the status and the server's own message for any answer but 2xx (redirects included)."""
    if response.status < 300:
        return
    reason = f"{response.status} {response.reason or ''}".strip()
    if response.status < 400:
        raise TTSError(f"the speech server answered {reason}, a redirect, which is not followed")
    text = (await _read_at_most(response, MAX_ERROR_BYTES)).decode(errors="replace")[:300]
    try:
        detail = json.loads(text)
        error = detail.get("error", detail.get("detail", text)) if isinstance(detail, dict) else text
        message = error.get("message", text) if isinstance(error, dict) else str(error)
    except ValueError:
        message = text
    if response.status in (401, 403):
        raise TTSError(f"the speech server refused the API key ({reason})")
    if response.status == 429:  # its queue is full: the same "busy" as the bot's own queue
        retry_after = response.headers.get("Retry-After", "")
        wait = float(retry_after) if retry_after.isdigit() else BUSY_SECONDS
        raise TTSQueueFull.after(min(wait, MAX_RETRY_AFTER_S))
    raise TTSError(f"the speech server answered {reason}: {message.strip() or 'no details'}")
