"""Speech as a service: the project's engine as a Ray Serve deployment behind an OpenAI-compatible API.

    serve run audio.serve:app                 # one machine: starts a local Ray, serves on 127.0.0.1:8000
    serve run deploy/serve.yaml               # the sample config (cluster: on the head node)
    python -m audio.serve                     # like `serve run`, on TTS_SERVE_HOST:TTS_SERVE_PORT

`POST /v1/audio/speech` takes OpenAI's JSON (`model`, `input`, `voice` = a Parler description, `response_format`
"pcm", `stream`) plus `seed`, and streams 16-bit little-endian mono PCM as it is generated, with the rate in
`X-Sample-Rate`. A client that disconnects cancels its generation within one decoding step. `GET /v1/models`
lists the loaded model (with its `sample_rate`), `GET /healthz` answers without a token and reports the streams.
With a key (`tts_api_key` in the app's arguments, else the replica's own `TTS_API_KEY`) every other path wants
`Authorization: Bearer <key>` (401 otherwise); without one the replica warns at start-up.

Requests the engine cannot serve are refused before anything reaches it, with 4xx and a sentence: a body over
`MAX_BODY_BYTES` (413), JSON that is not an object or nests too deeply, a `voice` over `MAX_VOICE_CHARS`, a seed
that is not a 64-bit integer, and a sentence or voice over the model's token limits (400, `InvalidRequest`).
Failures of the engine answer 500 with a generic sentence (the details go to the log). A reader that leaves more
than `MAX_BEHIND_S` of audio unread has its answer stopped, so the decoding loop never waits for one client
(behind Serve's HTTP proxy the replica's writes never wait: what a slow client has not read waits in the proxy).

Each replica runs one engine from `load_engine` and up to `engine.max_streams` answers at once through a
`SpeechScheduler`; Serve scales replicas (one per GPU) on ongoing requests. Requires the `serve` extra.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from audio.formats import to_pcm16
from audio.speech import (
    DEFAULT_SEED,
    EngineHealth,
    SpeechEngine,
    SpeechScheduler,
    TTSConfig,
    TTSError,
    TTSQueueFull,
    Voice,
    engine_health,
    split_sentences,
)
from audio.speech import load_engine as _load_engine
from audio.speech.settings import SpeechModelSettings

log = logging.getLogger(__name__)

EngineFactory = Callable[[TTSConfig], SpeechEngine]
MAX_INPUT_CHARS = 4096  # OpenAI's limit for one speech request
MAX_VOICE_CHARS = 1000  # a Parler description is a sentence or two; the model reads 256 tokens of it at most
MAX_BODY_BYTES = 64 * 1024  # room for the longest input and voice, escaped
MAX_BEHIND_S = 60.0  # audio a reader may leave unread before its answer is stopped
SEEDS = range(-(2**63), 2**63)  # the seeds torch's generators take
KEY_PLACEHOLDER = "REPLACE-WITH-A-SECRET"  # deploy/serve.yaml's stand-in for the key
# Answers last seconds and come in bursts, while a new replica takes minutes (model load, CUDA graphs): add one
# after 10 s of load over target, keep it through 5 quiet minutes (Ray's defaults: 30 s and 600 s).
AUTOSCALING_DELAYS = {"upscale_delay_s": 10.0, "downscale_delay_s": 300.0}


class InvalidRequest(Exception):
    """A request this server refuses as the client's mistake: `status` (400 unless said) and a sentence."""

    def __init__(self, sentence: str, status: int = 400) -> None:
        super().__init__(sentence)
        self.status = status


class ServeSettings(SpeechModelSettings):
    """The speech server's settings (environment, `.env`, or `serve run audio.serve:app key=value` arguments); the
    model's are the bot's (`SpeechModelSettings`), for the engine on each replica."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    tts_api_key: SecretStr | None = None
    tts_queue_size: int = Field(16, ge=1)
    tts_min_replicas: int = Field(1, ge=0)
    tts_max_replicas: int = Field(1, ge=1)
    tts_target_ongoing_requests: float = Field(4.0, gt=0)
    tts_max_ongoing_requests: int = Field(32, ge=1)
    # GPUs per replica; empty = 1 when this machine has CUDA, else 0 (set 1 on a cluster with a CPU-only head).
    tts_replica_gpus: float | None = Field(None, ge=0)
    tts_replica_cpus: float = Field(1.0, ge=0)
    tts_serve_host: str = "127.0.0.1"
    tts_serve_port: int = Field(8000, ge=0, le=65535)

    @field_validator("tts_api_key")
    @classmethod
    def _not_the_placeholder(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and key.get_secret_value() == KEY_PLACEHOLDER:
            raise ValueError(f"replace {KEY_PLACEHOLDER} with a secret of your own (see the README)")
        return key

    def replica_gpus(self) -> float:
        if self.tts_replica_gpus is not None:
            return self.tts_replica_gpus
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0


class _MeteredEngine:
    """Counts the seconds of audio the engine generated (observable through `/healthz`)."""

    def __init__(self, engine: SpeechEngine) -> None:
        self._engine = engine
        self.sample_rate = engine.sample_rate
        self.max_streams = engine.max_streams
        self.samples = 0
        self._lock = threading.Lock()

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        for chunk in self._engine.stream(text, voice, cancel):
            with self._lock:
                self.samples += chunk.size
            yield chunk

    def health(self) -> EngineHealth:
        return engine_health(self._engine)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def bearer_token(authorization: str) -> bytes:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case, RFC 6750), else b""."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


class TokenLimits:
    """Checks an answer's sentences and voice against the engine's prompt and description limits, in tokens,
    before the engine sees them (a long later sentence would otherwise fail in the middle of the answer)."""

    def __init__(self, tokenizer: Any, prompt_tokens: int, description_tokens: int) -> None:
        self._tokenizer = copy.deepcopy(tokenizer)  # the decoding loop's own one is used on its thread
        self._prompt_tokens = prompt_tokens
        self._description_tokens = description_tokens

    @classmethod
    def of(cls, engine: SpeechEngine) -> TokenLimits | None:
        """The limits of the project's engine; None for other engines (tests' stand-ins)."""
        from audio.speech.server import DESCRIPTION_TOKENS, PROMPT_TOKENS, SpeechServer  # torch, on replicas only

        if not isinstance(engine, SpeechServer):
            return None
        return cls(engine.loop.tokenizer, PROMPT_TOKENS, DESCRIPTION_TOKENS)

    def check(self, text: str, voice: str) -> None:
        """Raise `InvalidRequest` naming the first sentence or the voice that is too long."""
        sentences = split_sentences(text)
        counts = [len(ids) for ids in self._tokenizer([*sentences, voice])["input_ids"]]
        for number, count in enumerate(counts[:-1], 1):
            if count > self._prompt_tokens:
                raise InvalidRequest(
                    f"Sentence {number} of `input` is {count} tokens long; "
                    f"the model takes at most {self._prompt_tokens}."
                )
        if counts[-1] > self._description_tokens:
            raise InvalidRequest(
                f"`voice` is {counts[-1]} tokens long; the model takes at most {self._description_tokens}."
            )


async def read_json(request: Request) -> Any:
    """The JSON body, at most `MAX_BODY_BYTES` long (413 beyond, read no further) and parseable (400)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidRequest(f"The body is larger than {MAX_BODY_BYTES} bytes.", 413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequest(f"The body is larger than {MAX_BODY_BYTES} bytes.", 413)
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidRequest("The body's JSON nests too deeply.") from None
    except ValueError:
        raise InvalidRequest("The body must be JSON.") from None


class SpeechDeployment:
    """One replica: the engine, a scheduler in front of it, and the HTTP routes."""

    def __init__(
        self,
        config: TTSConfig,
        api_key: SecretStr | None = None,
        queue_size: int = 16,
        engine_factory: EngineFactory = _load_engine,
    ) -> None:
        """`api_key` None: the replica's own `TTS_API_KEY` (so the key need not be where the app is built)."""
        self._model = config.model
        engine = engine_factory(config)
        self._limits = TokenLimits.of(engine)
        self._engine = _MeteredEngine(engine)
        self._scheduler = SpeechScheduler(
            self._engine, queue_size=queue_size, queue_per_key=1, slots_per_key=1, max_behind_s=MAX_BEHIND_S
        )  # one key per request: first come, first served
        api_key = api_key or ServeSettings().tts_api_key
        self._expected = api_key.get_secret_value().encode() if api_key else None
        if self._expected is None:
            log.warning("No TTS_API_KEY: this speech server answers anyone who can reach its port")
        self._requests = itertools.count()
        self._served = self._cancelled = self._failed = 0
        log.info(
            "Speech replica ready: %s at %d Hz, %d streams",
            self._model,
            self._engine.sample_rate,
            self._engine.max_streams,
        )

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path == "/healthz" and method == "GET":
            return JSONResponse(self._health())
        if self._expected is not None and not hmac.compare_digest(
            bearer_token(request.headers.get("authorization", "")), self._expected
        ):
            return _error(401, "A valid API key is required.", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        if path == "/v1/models" and method == "GET":
            return JSONResponse({"object": "list", "data": [self._model_card()]})
        if path == "/v1/audio/speech" and method == "POST":
            return await self._speech(request)
        return _error(404, f"No route for {method} {path}.", "not_found")

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self._model,
            "object": "model",
            "owned_by": "magic8ball",
            "sample_rate": self._engine.sample_rate,
            "max_streams": self._engine.max_streams,
        }

    def check_health(self) -> None:
        """Serve's periodic replica check: a hung engine, or one whose steps keep failing (a sticky CUDA error),
        raises, and Serve replaces the replica."""
        if problem := self._engine.health().problem:
            raise RuntimeError(f"The speech engine is unhealthy: {problem}")

    def _health(self) -> dict[str, Any]:
        problem = self._engine.health().problem
        return {
            "status": "unhealthy" if problem else "ok",
            **({"problem": problem} if problem else {}),
            "model": self._model,
            "running": self._scheduler.running,
            "waiting": self._scheduler.waiting,
            "served": self._served,
            "cancelled": self._cancelled,
            "failed": self._failed,
            "generated_seconds": self._engine.samples / self._engine.sample_rate,
        }

    async def _speech(self, request: Request) -> Response:
        try:
            body = await read_json(request)
            voice = self._voice(body)
            if self._limits is not None:
                self._limits.check(body["input"], voice.description)
        except InvalidRequest as exc:
            return _error(exc.status, str(exc), "invalid_request_error")
        try:
            stream = self._scheduler.stream(next(self._requests), body["input"], voice)
        except TTSQueueFull as exc:
            retry = str(int(np.ceil(exc.retry_after or 1)))
            return _error(429, str(exc), "rate_limit_exceeded", {"Retry-After": retry})
        # The first chunk before the headers: a failure to start is a 500, not an empty 200.
        try:
            first = await anext(stream, None)
        except TTSError:
            self._failed += 1
            log.warning("Speech failed before the first chunk", exc_info=True)
            return _error(500, "Speech generation failed; the server's log has the details.", "server_error")
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        headers = {"X-Sample-Rate": str(self._engine.sample_rate)}
        return StreamingResponse(self._pcm(first, stream), media_type="audio/pcm", headers=headers)

    def _voice(self, body: Any) -> Voice:
        """The voice of a request this server can answer; `InvalidRequest` saying why not otherwise."""
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.")
        text, voice, seed = body.get("input"), body.get("voice"), body.get("seed", DEFAULT_SEED)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("`input` must be non-empty text.")
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidRequest(f"`input` is longer than {MAX_INPUT_CHARS} characters.")
        if not isinstance(voice, str) or not voice.strip():
            raise InvalidRequest("`voice` must be a voice description.")
        if len(voice) > MAX_VOICE_CHARS:
            raise InvalidRequest(f"`voice` is longer than {MAX_VOICE_CHARS} characters.")
        if body.get("model", self._model) != self._model:
            raise InvalidRequest(f"This server serves the model {self._model!r}.")
        if body.get("response_format", "pcm") != "pcm":
            raise InvalidRequest('Only `response_format` "pcm" (16-bit mono) is served.')
        if isinstance(seed, bool) or not isinstance(seed, int) or seed not in SEEDS:
            raise InvalidRequest("`seed` must be an integer that fits in 64 bits.")
        return Voice(voice, seed)

    async def _pcm(self, first: np.ndarray | None, stream: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
        """The response body. A failure mid-answer raises, so the client sees a cut stream, not a short answer."""
        ended = False
        try:
            if first is not None:
                yield to_pcm16(first).tobytes()
            async for chunk in stream:
                yield to_pcm16(chunk).tobytes()
            self._served += 1
            ended = True
        except TTSError:
            self._failed += 1
            ended = True
            log.warning("Speech failed in the middle of an answer", exc_info=True)
            raise  # Serve cuts the stream; the exception's text stays in the log
        finally:
            if not ended:  # the client went away: stop generating
                self._cancelled += 1
                await stream.aclose()  # type: ignore[attr-defined]


def build(settings: ServeSettings, engine_factory: EngineFactory = _load_engine) -> Application:
    """The Serve application for `settings`; `engine_factory` builds each replica's engine from its config."""
    deployment = serve.deployment(
        SpeechDeployment,
        name="speech",
        ray_actor_options={"num_gpus": settings.replica_gpus(), "num_cpus": settings.tts_replica_cpus},
        max_ongoing_requests=settings.tts_max_ongoing_requests,
        autoscaling_config={
            "min_replicas": settings.tts_min_replicas,
            "max_replicas": max(settings.tts_min_replicas, settings.tts_max_replicas),
            "target_ongoing_requests": settings.tts_target_ongoing_requests,
            **AUTOSCALING_DELAYS,
        },
    )
    return deployment.bind(settings.tts_config(), settings.tts_api_key, settings.tts_queue_size, engine_factory)


def app(args: dict[str, str]) -> Application:
    """Serve's application builder: `serve run audio.serve:app [tts_model=...]`; arguments override settings."""
    return build(ServeSettings(**args))


def main() -> None:
    """`python -m audio.serve`: a local Ray (or the cluster in RAY_ADDRESS) serving until interrupted."""
    settings = ServeSettings()
    serve.start(http_options={"host": settings.tts_serve_host, "port": settings.tts_serve_port})
    try:
        serve.run(build(settings), name="speech", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        serve.shutdown()  # Ray itself stops with this process


if __name__ == "__main__":
    main()
