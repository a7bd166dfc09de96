"""Speech as a service: the project's engine as a Ray Serve deployment behind an OpenAI-compatible API.

    serve run audio.serve:app                 # one machine: starts a local Ray, serves on 127.0.0.1:8000
    serve run deploy/serve.yaml               # the sample config (cluster: on the head node)
    python -m audio.serve                     # like `serve run`, on TTS_SERVE_HOST:TTS_SERVE_PORT

`POST /v1/audio/speech` takes OpenAI's JSON (`model`, `input`, `voice` = a Parler description, `response_format`
"pcm", `stream`) plus `seed`, and streams 16-bit little-endian mono PCM as it is generated, with the rate in
`X-Sample-Rate`. A client that disconnects cancels its generation within one decoding step. `GET /v1/models`
lists the loaded model (with its `sample_rate`), `GET /healthz` answers without a token and reports the streams.
With `TTS_API_KEY` set every other path wants `Authorization: Bearer <key>` (401 otherwise).

Each replica runs one engine from `load_engine` and up to `engine.max_streams` answers at once through a
`SpeechScheduler`; Serve scales replicas (one per GPU) on ongoing requests. Requires the `serve` extra.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from audio.speech import DEFAULT_SEED, SpeechEngine, SpeechScheduler, TTSConfig, TTSError, TTSQueueFull, Voice
from audio.speech import load_engine as _load_engine

log = logging.getLogger(__name__)

EngineFactory = Callable[[TTSConfig], SpeechEngine]
MAX_INPUT_CHARS = 4096  # OpenAI's limit for one speech request


class ServeSettings(BaseSettings):
    """The speech server's settings (environment, `.env`, or `serve run audio.serve:app key=value` arguments)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    tts_model: str = "parler-tts/parler-mini-v1-jenny"
    tts_device: str = "auto"
    tts_dtype: str = "auto"
    tts_attn_implementation: str = "sdpa"
    tts_api_key: SecretStr | None = None
    # The batched engine on each replica, as in the bot's settings (empty batch: 32 on CUDA, 8 on CPU).
    tts_max_batch: int | None = Field(None, ge=1, le=256)
    tts_max_frames: int | None = Field(None, ge=16)
    tts_quantize: Literal["none", "int8"] = "none"
    tts_cpu_path: Literal["auto", "fp32", "packed", "int8", "bf16"] = "auto"
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

    def tts_config(self) -> TTSConfig:
        return TTSConfig(
            model=self.tts_model,
            device=self.tts_device,
            dtype=self.tts_dtype,
            attn_implementation=self.tts_attn_implementation,
            max_batch=self.tts_max_batch,
            max_frames=self.tts_max_frames,
            quantize=self.tts_quantize,
            cpu_path=self.tts_cpu_path,
        )

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


def to_s16le(chunk: np.ndarray) -> bytes:
    """float32 [-1, 1] → 16-bit little-endian PCM (the inverse of the client's `/ 32768`)."""
    return np.clip(np.round(chunk * 32768.0), -32768, 32767).astype("<i2").tobytes()


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


class SpeechDeployment:
    """One replica: the engine, a scheduler in front of it, and the HTTP routes."""

    def __init__(
        self,
        config: TTSConfig,
        api_key: SecretStr | None = None,
        queue_size: int = 16,
        engine_factory: EngineFactory = _load_engine,
    ) -> None:
        self._model = config.model
        self._engine = _MeteredEngine(engine_factory(config))
        self._scheduler = SpeechScheduler(
            self._engine, queue_size=queue_size, queue_per_key=1, slots_per_key=1
        )  # one key per request: first come, first served
        self._expected = f"Bearer {api_key.get_secret_value()}".encode() if api_key else None
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
            request.headers.get("authorization", "").encode(), self._expected
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

    def _health(self) -> dict[str, Any]:
        return {
            "status": "ok",
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
            body = await request.json()
        except ValueError:
            return _error(400, "The body must be JSON.", "invalid_request_error")
        problem = self._invalid(body)
        if problem:
            return _error(400, problem, "invalid_request_error")
        voice = Voice(body["voice"], int(body.get("seed", DEFAULT_SEED)))
        try:
            stream = self._scheduler.stream(next(self._requests), body["input"], voice)
        except TTSQueueFull as exc:
            retry = str(int(np.ceil(exc.retry_after or 1)))
            return _error(429, str(exc), "rate_limit_exceeded", {"Retry-After": retry})
        # The first chunk before the headers: a failure to start is a 500, not an empty 200.
        try:
            first = await anext(stream, None)
        except TTSError as exc:
            self._failed += 1
            log.warning("Speech failed before the first chunk: %s", exc)
            return _error(500, f"Speech generation failed: {exc}", "server_error")
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        headers = {"X-Sample-Rate": str(self._engine.sample_rate)}
        return StreamingResponse(self._pcm(first, stream), media_type="audio/pcm", headers=headers)

    def _invalid(self, body: Any) -> str | None:
        """Why `body` is not a request this server can answer, or None."""
        if not isinstance(body, dict):
            return "The body must be a JSON object."
        text, voice = body.get("input"), body.get("voice")
        if not isinstance(text, str) or not text.strip():
            return "`input` must be non-empty text."
        if len(text) > MAX_INPUT_CHARS:
            return f"`input` is longer than {MAX_INPUT_CHARS} characters."
        if not isinstance(voice, str) or not voice.strip():
            return "`voice` must be a voice description."
        if body.get("model", self._model) != self._model:
            return f"This server serves the model {self._model!r}."
        if body.get("response_format", "pcm") != "pcm":
            return 'Only `response_format` "pcm" (16-bit mono) is served.'
        if not isinstance(body.get("seed", 0), int):
            return "`seed` must be an integer."
        return None

    async def _pcm(self, first: np.ndarray | None, stream: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
        """The response body. A failure mid-answer raises, so the client sees a cut stream, not a short answer."""
        ended = False
        try:
            if first is not None:
                yield to_s16le(first)
            async for chunk in stream:
                yield to_s16le(chunk)
            self._served += 1
            ended = True
        except TTSError:
            self._failed += 1
            ended = True
            log.warning("Speech failed in the middle of an answer", exc_info=True)
            raise
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
