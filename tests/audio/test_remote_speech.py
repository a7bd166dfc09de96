"""The remote speech engine against a small OpenAI-style speech server on loopback (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
from aiohttp import web

from audio.speech import SpeechScheduler, TTSError, TTSQueueFull, Voice
from audio.speech.remote import (
    MAX_RETRY_AFTER_S,
    OPENAI_SAMPLE_RATE,
    PcmDecoder,
    RemoteConfig,
    RemoteEngine,
    audio_cap_seconds,
)
from tests.fakes.speech_app import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

VOICE = Voice("A calm voice.", seed=7)
# The client's cancel path is a 20 ms poll plus one event-loop turn; the bound adds room for a 2-core machine
# shared by several test runs, where a thread can wait its turn for a few hundred milliseconds.
DISCONNECT_BUDGET_S = 0.1
LOADED_MACHINE_MARGIN_S = 0.4

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pcm(samples: np.ndarray) -> bytes:
    return (samples * 32768).astype("<i2").tobytes()


def ramp(count: int, start: int = 0) -> np.ndarray:
    """Distinct, exactly representable samples."""
    return ((np.arange(start, start + count) % 2000) - 1000).astype(np.float32) / 32768


class FakeSpeechAPI:
    """Serves `/v1/models` (or redirects it to `models_redirect`) and delegates `/v1/audio/speech` to
    `self.speech`; records each request's body and headers; `disconnected` is set when a client goes away
    mid-answer."""

    def __init__(self, speech: Handler, models: dict | None = None) -> None:
        self.speech = speech
        self.models = models if models is not None else {"data": [{"id": "parler", "sample_rate": 44100}]}
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.disconnected = asyncio.Event()
        self.models_redirect: str | None = None

    async def _models(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.models_redirect:
            raise web.HTTPFound(self.models_redirect)
        return web.json_response(self.models)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        try:
            return await self.speech(request)
        except (asyncio.CancelledError, ConnectionResetError):  # gone while waiting, or while writing
            self.disconnected.set()
            raise


@asynccontextmanager
async def serving(
    server: FakeSpeechAPI,
    extra: tuple[web.RouteDef, ...] = (),
    port: int = 0,
) -> AsyncIterator[str]:
    """Serve `server` (and the `extra` routes) on `port` of the loopback (0: a free one); yields its base URL."""
    app = web.Application()
    app.router.add_get("/v1/models", server._models)
    app.router.add_post("/v1/audio/speech", server._speech)
    app.router.add_routes(extra)
    runner = web.AppRunner(app, handler_cancellation=True)  # a client that goes away cancels the handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def engine_for(url: str, **options: object) -> AsyncIterator[RemoteEngine]:
    config = RemoteConfig(base_url=url, model="parler", **options)  # type: ignore[arg-type]
    engine = await asyncio.to_thread(RemoteEngine.connect, config)
    try:
        yield engine
    finally:
        await asyncio.to_thread(engine.close)


async def start_pcm(request: web.Request, rate: int | None = 44100) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Sample-Rate": str(rate)} if rate else {})
    await response.prepare(request)
    return response


async def take(chunks: Iterator[np.ndarray], count: int | None = None) -> list[np.ndarray]:
    """The next `count` chunks (all when None), read on a thread like the scheduler does."""
    return await asyncio.to_thread(lambda: list(chunks) if count is None else [next(chunks) for _ in range(count)])


async def test_chunks_arrive_while_the_answer_is_still_being_generated() -> None:
    release = asyncio.Event()

    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request)
        await response.write(pcm(ramp(1000)))
        await release.wait()  # the answer is not over until the test has seen the first chunk
        await response.write(pcm(ramp(1001, 1000))[:1001])  # an odd byte count: half a sample, split over writes
        await response.write(pcm(ramp(1001, 1000))[1001:])
        await response.write_eof()
        return response

    server = FakeSpeechAPI(speech)
    async with serving(server) as url, engine_for(url, api_key="sesame") as engine:
        assert engine.sample_rate == 44100  # from /v1/models
        chunks = engine.stream("It is certain.", VOICE)
        (first,) = await take(chunks, 1)
        np.testing.assert_array_equal(first, ramp(1000))
        release.set()
        rest = await take(chunks)

    np.testing.assert_array_equal(np.concatenate([first, *rest]), ramp(2001))
    assert server.bodies == [
        {
            "model": "parler",
            "input": "It is certain.",
            "voice": "A calm voice.",
            "response_format": "pcm",
            "stream": True,
            "seed": 7,
        }
    ]
    assert {h["Authorization"] for h in server.headers} == {"Bearer sesame"}
    assert "sesame" not in repr(engine) and "sesame" not in repr(engine.config)


async def test_named_voices_and_the_rate_openai_sends() -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request, rate=None)  # no X-Sample-Rate: 24 kHz
        await response.write(pcm(ramp(480)))
        return response

    server = FakeSpeechAPI(speech, models={"object": "list", "data": [{"id": "kokoro"}]})
    async with serving(server) as url, engine_for(f"{url}/v1", voice="af_bella") as engine:  # OpenAI-style base
        assert engine.sample_rate == OPENAI_SAMPLE_RATE
        audio = np.concatenate(await take(engine.stream("Yes.", VOICE)))
    np.testing.assert_array_equal(audio, ramp(480))
    assert server.bodies[0]["voice"] == "af_bella"
    assert "Authorization" not in server.headers[0]


async def test_a_stream_at_another_rate_is_resampled() -> None:
    seconds = np.arange(2400) / 24000
    sine = (0.5 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)

    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request, rate=24000)
        for part in np.array_split(sine, 7):
            await response.write(pcm(part))
        return response

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url, sample_rate=48000) as engine:
        audio = np.concatenate(await take(engine.stream("Yes.", VOICE)))
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(audio.size) / 48000)
    assert abs(audio.size - 2 * sine.size) <= 2
    assert np.max(np.abs(audio - expected)) < 0.01


def test_the_decoder_is_continuous_across_chunk_boundaries() -> None:
    samples = np.sin(np.arange(3001) / 9).astype(np.float32) * 0.5
    data = pcm(samples)
    whole = PcmDecoder(44100, 48000).feed(data)
    decoder = PcmDecoder(44100, 48000)
    pieces = [decoder.feed(data[i : i + 333]) for i in range(0, len(data), 333)]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)
    assert PcmDecoder(24000, 24000).feed(data[:5]).size == 2  # the odd byte waits for its partner


async def test_cancel_closes_the_stream_while_blocked_on_a_read() -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request)
        await response.write(pcm(ramp(1000)))
        await asyncio.Event().wait()  # generating forever, until the client goes away
        return response

    server = FakeSpeechAPI(speech)
    async with serving(server) as url, engine_for(url) as engine:
        cancel = threading.Event()
        chunks = engine.stream("Ask again later.", VOICE, cancel)
        await take(chunks, 1)
        rest = asyncio.create_task(take(chunks))  # blocked: the server sends nothing more
        await asyncio.sleep(0)
        cancel.set()
        await asyncio.wait_for(server.disconnected.wait(), DISCONNECT_BUDGET_S + LOADED_MACHINE_MARGIN_S)
        assert await asyncio.wait_for(rest, 10) == []


@pytest.mark.parametrize(
    ("status", "body", "sentence"),
    [
        (500, {"error": {"message": "CUDA out of memory"}}, "answered 500 Internal Server Error: CUDA out of memory"),
        (400, {"detail": "voice not found"}, "answered 400 Bad Request: voice not found"),
        (401, {"error": {"message": "bad key"}}, "refused the API key (401 Unauthorized)"),
    ],
)
async def test_error_statuses_become_sentences(status: int, body: dict, sentence: str) -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url) as engine:
        with pytest.raises(TTSError, match=re.escape(sentence)):
            await take(engine.stream("Yes.", VOICE))


async def test_a_stream_cut_mid_answer_is_an_error() -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request)
        await response.write(pcm(ramp(1000)))
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the server died mid-answer
        return response

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url) as engine:
        chunks = engine.stream("Yes.", VOICE)
        with pytest.raises(TTSError, match="stopped in the middle of an answer"):
            await take(chunks)


async def test_silence_for_the_timeout_is_an_error() -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request)
        await response.write(pcm(ramp(1000)))
        await asyncio.Event().wait()
        return response

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url, timeout=0.3) as engine:
        chunks = engine.stream("Yes.", VOICE)
        await take(chunks, 1)
        with pytest.raises(TTSError, match=r"sent nothing for 0\.3 seconds"):
            await take(chunks)


async def test_a_server_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TTSError, match="cannot be reached"):
        await asyncio.to_thread(RemoteEngine.connect, RemoteConfig(url, "parler"))
    async with engine_for(url, sample_rate=24000) as engine:  # a configured rate needs no server at start-up
        with pytest.raises(TTSError, match="cannot be reached"):
            await take(engine.stream("Yes.", VOICE))


async def test_a_busy_server_is_busy_for_the_bot_too() -> None:
    async def speech(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "queue full"}}, status=429, headers={"Retry-After": "7"})

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url) as engine:
        scheduler = SpeechScheduler(engine)
        try:
            with pytest.raises(TTSQueueFull) as busy:
                await anext(scheduler.stream("guild", "Yes.", VOICE))
        finally:
            await scheduler.close()
    assert busy.value.retry_after == 7
    assert busy.value.sentence == "The voice is busy with other answers; please try again in about 7 seconds."


async def test_an_unexpected_failure_still_ends_the_answer_with_an_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with engine_for(url, sample_rate=24000) as engine:

        def broken() -> None:
            raise RuntimeError("Session is closed")

        engine._client = broken  # type: ignore[method-assign]
        with pytest.raises(TTSError, match="failed: Session is closed"):
            await take(engine.stream("Yes.", VOICE))


def test_the_bot_side_never_imports_torch_or_ray() -> None:
    code = (
        "import sys, bot.client, bot.services, audio.speech.remote; "
        "print(sorted({'torch', 'ray'} & {m.split('.')[0] for m in sys.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


async def endless_pcm(request: web.Request, rate: int = 44100, samples: int = 4410) -> web.StreamResponse:
    """A server that never stops sending audio (until the client goes away)."""
    response = await start_pcm(request, rate)
    while True:
        await response.write(pcm(ramp(samples)))


async def test_more_audio_than_the_text_needs_ends_the_answer() -> None:
    text = "Yes."
    async with serving(FakeSpeechAPI(endless_pcm)) as url, engine_for(url) as engine:
        received: list[np.ndarray] = []

        def read() -> None:
            received.extend(engine.stream(text, VOICE))

        with pytest.raises(TTSError, match=r"more than 5\.8 seconds of audio for an answer of 4 characters"):
            await asyncio.to_thread(read)
    assert audio_cap_seconds(text) == 5.8
    assert sum(chunk.size for chunk in received) <= 5.8 * 44100


async def test_a_server_that_trickles_meets_the_total_deadline() -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = await start_pcm(request)
        while True:  # one sample at a time: never silent for `timeout`, never done
            await response.write(pcm(ramp(1)))
            await asyncio.sleep(0.01)

    server = FakeSpeechAPI(trickle)
    async with serving(server) as url, engine_for(url, timeout=5, total_timeout=0.5) as engine:
        with pytest.raises(TTSError, match=r"did not finish the answer in 0\.5 seconds"):
            await take(engine.stream("Yes.", VOICE))
        await asyncio.wait_for(server.disconnected.wait(), 10)  # the connection was dropped


def test_the_default_deadline_leaves_room_for_a_slow_server() -> None:
    config = RemoteConfig("http://127.0.0.1:1", "parler")
    assert config.deadline("x" * 50) == 60 + 3 * (5 + 10)
    assert RemoteConfig("http://127.0.0.1:1", "parler", total_timeout=7).deadline("x" * 50) == 7


@pytest.mark.parametrize("header", ["1", "0", "-44100", "192001", "fast"])
async def test_an_implausible_sample_rate_header_is_an_error(header: str) -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Sample-Rate": header})
        await response.prepare(request)
        await response.write(pcm(ramp(8)))
        return response

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url, sample_rate=48000) as engine:
        with pytest.raises(TTSError, match=r"X-Sample-Rate header .* is not between 8000 and 192000 Hz"):
            await take(engine.stream("Yes.", VOICE))


@pytest.mark.parametrize("rate", [0, -1, 1, 7999, 192_001, True, "44100x"])
async def test_an_implausible_sample_rate_in_the_model_listing_is_an_error(rate: object) -> None:
    server = FakeSpeechAPI(endless_pcm, models={"data": [{"id": "parler", "sample_rate": rate}]})
    async with serving(server) as url:
        with pytest.raises(TTSError, match=r"/v1/models .* is not between 8000 and 192000 Hz"):
            await asyncio.to_thread(RemoteEngine.connect, RemoteConfig(url, "parler"))
    with pytest.raises(TTSError, match="TTS_SAMPLE_RATE"):
        RemoteEngine.connect(RemoteConfig("http://127.0.0.1:1", "parler", sample_rate=1))


async def test_redirects_are_not_followed() -> None:
    followed = asyncio.Event()

    async def speech(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.set()
        return web.Response(body=b"<html>not audio</html>", headers={"X-Sample-Rate": "44100"})

    server = FakeSpeechAPI(speech)
    async with serving(server, extra=[web.get("/elsewhere", elsewhere), web.get("/v2/models", elsewhere)]) as url:
        async with engine_for(url, sample_rate=44100) as engine:
            with pytest.raises(TTSError, match="answered 302 Found, a redirect, which is not followed"):
                await take(engine.stream("Yes.", VOICE))
        server.models_redirect = "/v2/models"
        with pytest.raises(TTSError, match="a redirect, which is not followed"):
            await asyncio.to_thread(RemoteEngine.connect, RemoteConfig(url, "parler"))
    assert not followed.is_set()


async def test_an_endless_error_body_is_read_only_in_part() -> None:
    async def speech(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        await response.write(b"CUDA out of memory " * 4)
        while True:
            await response.write(b"x" * 65536)

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url, sample_rate=44100) as engine:
        with pytest.raises(TTSError, match="answered 500 Internal Server Error: CUDA out of memory") as failed:
            await take(engine.stream("Yes.", VOICE))
    assert len(str(failed.value)) < 400


async def test_retry_after_is_bounded() -> None:
    async def speech(request: web.Request) -> web.Response:
        return web.json_response({}, status=429, headers={"Retry-After": "86400000"})

    async with serving(FakeSpeechAPI(speech)) as url, engine_for(url) as engine:
        with pytest.raises(TTSQueueFull) as busy:
            await take(engine.stream("Yes.", VOICE))
    assert busy.value.retry_after == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("url", "key", "warned"),
    [
        ("http://speech.internal:8000", "sesame", True),
        ("http://10.0.0.7:8000/v1", "sesame", True),
        ("https://speech.example", "sesame", False),
        ("http://127.0.0.1:8000", "sesame", False),
        ("http://localhost:8000", "sesame", False),
        ("http://[::1]:8000", "sesame", False),
        ("http://speech.internal:8000", None, False),
    ],
)
def test_a_key_over_plain_http_to_another_host_is_warned_about(
    url: str, key: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "audio.speech.remote")
    engine = RemoteEngine.connect(RemoteConfig(url, "parler", api_key=key, sample_rate=24000))
    engine.close()
    warnings = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    assert all(key not in message for message in warnings if key)
