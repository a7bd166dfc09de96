"""A local fake of the Hugging Face Inference API (and OpenAI-compatible servers) on 127.0.0.1.

It answers exactly what huggingface_hub 0.36 sends: raw-audio ASR posts (`{"text": ...}`) and
`/v1/chat/completions` (OpenAI JSON), plus multipart `/v1/audio/transcriptions`, and the Hub's model info with its
provider mapping (`GET /api/models/<id>?expand=inferenceProviderMapping`, what `provider="auto"` reads; point
`huggingface_hub.constants.ENDPOINT` here). Every request is recorded; faults are injected on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Fault:
    """One injected failure: an HTTP status (with headers/body), a delay, or a malformed 200."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0
    malformed: bool = False


class FakeInference:
    """`async with FakeInference() as fake:`; point clients at `fake.url + "/asr"`, `"/llm"` or `"/openai"`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.transcript = "Should I adopt a dog?"
        self.chat_reply = "A watched pot never boils."
        # provider → mapping entry, in the account's preference order (the Hub's JSON shape)
        self.provider_mapping: dict[str, dict[str, str]] = {
            "hf-inference": {
                "status": "live",
                "providerId": "meta-llama/Llama-3.1-8B-Instruct",
                "task": "conversational",
            }
        }
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def fail(self, status: int, *, times: int = 1, headers: dict[str, str] | None = None, body: str = "") -> None:
        """Answer the next `times` requests with `status`."""
        self._faults += [Fault(status=status, headers=headers or {}, body=body) for _ in range(times)]

    def slow(self, seconds: float, *, times: int = 1) -> None:
        """Delay the next `times` answers by `seconds`."""
        self._faults += [Fault(delay=seconds) for _ in range(times)]

    def malformed(self, *, times: int = 1) -> None:
        """Answer the next `times` requests with 200 and a body that is not JSON."""
        self._faults += [Fault(malformed=True) for _ in range(times)]

    async def __aenter__(self) -> FakeInference:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.headers), body, time.monotonic())
        )
        fault = self._faults.pop(0) if self._faults else Fault()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status != 200:
            text = fault.body or json.dumps({"error": f"injected {fault.status}"})
            return web.Response(status=fault.status, text=text, headers=fault.headers, content_type="application/json")
        if fault.malformed:
            return web.Response(status=200, text="<html>not json", content_type="application/json")
        if request.method == "GET" and request.path.startswith("/api/models/"):
            model_id = request.path.removeprefix("/api/models/")
            return web.json_response(
                {"id": model_id, "_id": model_id, "inferenceProviderMapping": self.provider_mapping}
            )
        if request.path.endswith("/chat/completions"):
            return web.json_response(self._chat(json.loads(body)))
        return web.json_response({"text": self.transcript})

    def _chat(self, payload: dict) -> dict:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "fake"),
            "system_fingerprint": "fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.chat_reply},
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }
