"""Typed Inference API errors and bounded retries around `AsyncInferenceClient` calls."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from huggingface_hub.errors import InferenceTimeoutError

from audio.errors import UserFacingError

log = logging.getLogger(__name__)
T = TypeVar("T")


class InferenceError(UserFacingError):
    """An Inference API failure: `SENTENCE` is for the asker, `detail` (never holding headers) for the logs."""

    SENTENCE = "The oracle's spirits are unreachable right now; please try again later."

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(self.SENTENCE, retry_after=retry_after)
        self.detail = detail or type(self).__name__


class AuthError(InferenceError):
    SENTENCE = "The oracle's access token was refused; the bot owner needs to check HF_TOKEN or the API key."


class CreditsExhausted(InferenceError):
    SENTENCE = "The oracle has used up its inference credits for now; the bot owner needs to top them up."


class ModelBusy(InferenceError):
    SENTENCE = "The oracle is busy with other seekers; ask again in a minute."


class InferenceTimeout(InferenceError):
    SENTENCE = "The oracle took too long to answer; please ask again."


class ProviderError(InferenceError):
    SENTENCE = "The oracle's provider returned an error; please try again later."


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may take and how often busy answers (429/503) are retried."""

    timeout: float = 30.0
    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 20.0


_HF_DOMAINS = ("huggingface.co", "huggingface.cloud", "hf.space")


def is_hf_host(url: str) -> bool:
    """Whether `url` is served by Hugging Face (the Hub, its router, Inference Endpoints, Spaces)."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host == domain or host.endswith("." + domain) for domain in _HF_DOMAINS)


def chat_completions_url(base_url: str) -> str:
    """Where an OpenAI-compatible server takes chat completions (`<base>/v1/chat/completions`, as
    huggingface_hub resolves a base URL)."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


async def post(
    url: str,
    *,
    token: str | None,
    timeout: float,
    json: object = None,
    data: bytes | aiohttp.FormData | None = None,
    content_type: str | None = None,
) -> object:
    """POST to a server and return its JSON answer.

    Only `token` is sent (no `Authorization` at all without one): huggingface_hub's clients fall back to the
    HF_TOKEN of the environment, which must never reach a self-hosted server.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.post(url, json=json, data=data, headers=headers) as response,
    ):
        response.raise_for_status()
        return await response.json(content_type=None)


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _k: None)("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException) -> InferenceError:
    """Map a client exception to a typed error (the message never carries the request's headers)."""
    if isinstance(exc, InferenceError):
        return exc
    if isinstance(exc, (InferenceTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return InferenceTimeout("inference call timed out")
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        if status in (401, 403):
            return AuthError(f"HTTP {status}")
        if status == 402:
            return CreditsExhausted("HTTP 402")
        if status in (429, 503):
            return ModelBusy(f"HTTP {status}", retry_after=_retry_after(exc.headers))
        return ProviderError(f"HTTP {status}")
    if isinstance(exc, aiohttp.ClientError):
        return ProviderError(f"connection failed: {type(exc).__name__}")
    if isinstance(exc, (json.JSONDecodeError, ValueError, KeyError, TypeError)):
        return ProviderError(f"malformed answer: {type(exc).__name__}")
    return ProviderError(type(exc).__name__)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Run `call` with a per-attempt timeout; retry 429/503 and timeouts with backoff, honouring Retry-After."""
    for attempt in range(policy.retries + 1):
        try:
            return await asyncio.wait_for(call(), policy.timeout)
        except Exception as exc:
            error = classify(exc)
            retryable = isinstance(error, (ModelBusy, InferenceTimeout))
            if not retryable or attempt == policy.retries:
                log.warning("%s failed: %s (%s)", what, type(error).__name__, error.detail)
                raise error from exc
            delay = policy.base_delay * 2**attempt * (1 + random.random() / 4)
            delay = error.retry_after or delay
            if delay > policy.max_delay:
                raise error from exc
            log.info("%s: %s, retry %d/%d in %.1fs", what, type(error).__name__, attempt + 1, policy.retries, delay)
            await sleep(delay)
    raise AssertionError("unreachable")
