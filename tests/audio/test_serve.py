"""The speech server (`audio.serve`): its routes on a sine engine without Ray, then the real Ray Serve app started
locally with the tiny Parler model on CPU, behind the remote engine the bot uses."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from audio.serve import ServeSettings, SpeechDeployment
from audio.speech import EngineHealth, TTSConfig, TTSError, Voice, synthesize
from audio.speech.remote import RemoteConfig, RemoteEngine
from audio.speech.server import SpeechServer
from tests.bot.doubles import SineEngine, until
from tests.e2e.harness import load_voiced_engine
from tests.fakes.speech_app import FRAMES_PER_SENTENCE, local_speech_app

pytestmark = pytest.mark.timeout(240)

API_KEY = "test-key"
SENTENCE_S = FRAMES_PER_SENTENCE * 512 / 44100


@pytest.fixture(scope="module")
def local_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechServer]:
    """The in-process engine on the tiny checkpoint with an audible codec (loud enough that 16-bit PCM keeps
    about 95 dB of SNR: the plain tiny model's output sits near -40 dBFS, where quantisation alone gives 63 dB)."""
    engine = load_voiced_engine(tmp_path_factory.mktemp("served-parler"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def model(local_engine: SpeechServer) -> str:
    return local_engine.config.model


@pytest.fixture(scope="module")
def app_url(model: str) -> Iterator[str]:
    with local_speech_app(Path(model), api_key=API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def remote(app_url: str, model: str) -> Iterator[RemoteEngine]:
    engine = RemoteEngine.connect(RemoteConfig(app_url, model, api_key=API_KEY, timeout=60))
    yield engine
    engine.close()


def call(url: str, body: dict[str, Any] | None = None, key: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
    """GET (or POST `body`) and the JSON answer, whatever the status."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def health(app_url: str) -> dict[str, Any]:
    return call(f"{app_url}/healthz", key=None)[1]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((reference - test) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(noise, 1e-30)))


class GatedEngine(SineEngine):
    """A sine engine that waits for `gate` after each chunk, so answers stay in flight."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = threading.Event()

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        for chunk in super().stream(text, voice, cancel):
            yield chunk
            assert self.gate.wait(30)


def post(body: dict[str, Any]) -> Request:
    """A Starlette request as Serve's proxy hands it to the deployment."""
    scope = {"type": "http", "method": "POST", "path": "/v1/audio/speech", "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    return Request(scope, receive)


def sine_server(engine: SineEngine, queue_size: int = 16) -> SpeechDeployment:
    return SpeechDeployment(TTSConfig(model="sine"), queue_size=queue_size, engine_factory=lambda _: engine)


SPEECH = {"model": "sine", "input": "Outlook good.", "voice": "A calm voice.", "response_format": "pcm"}


async def body_of(response: Response) -> bytes:
    assert isinstance(response, StreamingResponse)
    return b"".join([bytes(part) async for part in response.body_iterator])  # type: ignore[arg-type]


def test_the_batched_engine_settings_reach_each_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"TTS_MAX_BATCH": "4", "TTS_MAX_FRAMES": "860", "TTS_QUANTIZE": "int8"}.items():
        monkeypatch.setenv(name, value)
    config = ServeSettings().tts_config()
    assert (config.max_batch, config.max_frames, config.quantize) == (4, 860, "int8")


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    engine = GatedEngine()
    server = sine_server(engine, queue_size=1)
    running = await server(post(SPEECH))  # streaming, held at its first chunk
    waiting = asyncio.create_task(server(post(SPEECH)))  # queued behind it
    await until(lambda: server._health()["waiting"] == 1)
    refused = await server(post(SPEECH))
    assert isinstance(refused, JSONResponse) and refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    engine.gate.set()
    assert running.headers["X-Sample-Rate"] == "16000"
    assert len(await body_of(running)) == len(await body_of(await waiting)) == 2 * round(13 * 0.01 * 16000)


async def test_failures_before_and_after_the_first_chunk() -> None:
    before = sine_server(SineEngine(fail_at={"*": 0}))
    response = await before(post(SPEECH))
    assert response.status_code == 500 and b"synthetic TTS failure" in bytes(response.body)

    after = sine_server(SineEngine(fail_at={"*": 1}, chunk_seconds=0.05))
    with pytest.raises(TTSError):  # the server drops the connection: the client sees a cut stream
        await body_of(await after(post(SPEECH)))
    assert after._health()["failed"] == 1 and after._health()["served"] == 0


def test_models_health_and_keys(app_url: str, model: str) -> None:
    status, models = call(f"{app_url}/v1/models")
    assert status == 200
    assert [(m["id"], m["sample_rate"]) for m in models["data"]] == [(model, 44100)]
    assert health(app_url)["status"] == "ok"  # no token needed

    speech = {"model": model, "input": "Yes.", "voice": "A calm voice.", "response_format": "pcm"}
    for key in ("wrong-key", None):
        status, answer = call(f"{app_url}/v1/audio/speech", speech, key=key)
        assert (status, answer["error"]["type"]) == (401, "invalid_api_key")
    assert call(f"{app_url}/v1/models", key="wrong-key")[0] == 401
    wrong = RemoteEngine(RemoteConfig(app_url, model, api_key="wrong-key"), 44100)
    try:
        with pytest.raises(TTSError, match="refused the API key"):
            list(wrong.stream("Yes.", Voice("A calm voice.")))
    finally:
        wrong.close()

    for change in ({"model": "tts-1"}, {"response_format": "mp3"}, {"input": ""}, {"seed": "forty-two"}):
        status, answer = call(f"{app_url}/v1/audio/speech", {**speech, **change})
        assert (status, answer["error"]["type"]) == (400, "invalid_request_error"), change


def test_the_audio_equals_the_in_process_engine(remote: RemoteEngine, local_engine: SpeechServer) -> None:
    text, voice = "Most likely. Outlook good.", Voice("A male speaker with a deep voice.", seed=5)
    chunks = list(remote.stream(text, voice))
    expected = synthesize(local_engine, text, voice)
    assert len(chunks) > 1  # streamed, not one blob
    received = np.concatenate(chunks)
    assert received.shape == expected.shape == (2 * FRAMES_PER_SENTENCE * 512,)
    assert (snr := snr_db(expected, received)) >= 60, snr


def test_two_concurrent_requests_both_stream(remote: RemoteEngine, local_engine: SpeechServer) -> None:
    requests = [("It is certain.", Voice("A calm voice.", seed=1)), ("Very doubtful.", Voice("A calm voice.", 2))]
    both_sent = threading.Barrier(2, timeout=60)

    def ask(text: str, voice: Voice) -> list[np.ndarray]:
        chunks = remote.stream(text, voice)
        both_sent.wait()
        return list(chunks)

    served = health(remote.config.root)["served"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda request: ask(*request), requests))
    for (text, voice), chunks in zip(requests, answers, strict=True):
        assert len(chunks) > 1
        assert (snr := snr_db(synthesize(local_engine, text, voice), np.concatenate(chunks))) >= 60, snr
    assert health(remote.config.root)["served"] == served + 2


def test_a_client_disconnect_stops_generation(remote: RemoteEngine) -> None:
    before = health(remote.config.root)
    sentences = 20
    cancel = threading.Event()
    chunks = remote.stream(" ".join(["Reply hazy, try again."] * sentences), Voice("A calm voice."), cancel)
    next(chunks)
    cancel.set()
    assert list(chunks) == []

    deadline = time.monotonic() + 60
    while (after := health(remote.config.root))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the replica's engine is in another process: poll its state
    assert after["running"] == 0
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["served"] == before["served"]
    # Generation stopped early: far less than the 20 sentences was generated.
    assert after["generated_seconds"] - before["generated_seconds"] < sentences * SENTENCE_S / 2


class AilingEngine(SineEngine):
    """A sine engine that reports `problem` through the health interface."""

    problem = ""

    def health(self) -> EngineHealth:
        return EngineHealth(self.problem)


def test_the_replica_check_follows_the_engine_health() -> None:
    engine = AilingEngine()
    server = sine_server(engine)
    server.check_health()  # healthy: Serve keeps the replica
    assert server._health()["status"] == "ok"
    engine.problem = "the last 3 speech decoding steps failed"
    with pytest.raises(RuntimeError, match="the last 3 speech decoding steps failed"):
        server.check_health()  # Serve replaces a replica whose check raises
    assert server._health()["status"] == "unhealthy"
    assert server._health()["problem"] == engine.problem
