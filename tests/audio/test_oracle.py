"""The oracle: requests as huggingface_hub sends them, typed errors for each fault, and sanitising."""

from __future__ import annotations

import asyncio
import random

import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub import constants as hub_constants

from audio.inference import (
    AuthError,
    CreditsExhausted,
    InferenceTimeout,
    ModelBusy,
    ProviderError,
    RetryPolicy,
)
from audio.oracle import CLASSIC_ANSWERS, FOOLISH, MAX_ANSWER_CHARS, PERSONA, Oracle, OracleConfig, sanitize_answer
from tests.fakes.inference import FakeInference

TOKEN = "hf_testtoken_0123456789abcdef"
FAST = RetryPolicy(timeout=2.0, retries=2, base_delay=0.05)


def oracle_for(fake: FakeInference, retry: RetryPolicy = FAST) -> Oracle:
    return Oracle(
        OracleConfig(model="meta-llama/Llama-3.1-8B-Instruct", base_url=f"{fake.url}/llm", token=TOKEN, retry=retry)
    )


async def test_offline_answers_come_from_the_twenty() -> None:
    oracle = Oracle(OracleConfig(), rng=random.Random(7))
    assert oracle.offline
    answers = {await oracle.answer("Will it rain?") for _ in range(200)}
    assert answers <= set(CLASSIC_ANSWERS)
    assert len(answers) > 10
    assert len(CLASSIC_ANSWERS) == 20


async def test_chat_request_shape(fake_inference: FakeInference) -> None:
    fake_inference.chat_reply = "Curiosity killed the cat."
    oracle = oracle_for(fake_inference)
    assert not oracle.offline
    assert await oracle.answer("Should I adopt a dog?") == "Curiosity killed the cat."
    await oracle.answer("Should I adopt a dog?")
    first, second = fake_inference.requests
    assert first.method == "POST" and first.path == "/llm/v1/chat/completions"
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    body = first.json()
    assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert body["max_tokens"] == 64
    assert isinstance(body["seed"], int)
    assert body["seed"] != second.json()["seed"]  # a random seed per question
    assert body["messages"][0] == {"role": "system", "content": PERSONA}
    assert body["messages"][-1] == {"role": "user", "content": "Should I adopt a dog?"}
    assert "Magic 8 Ball" in PERSONA and FOOLISH in PERSONA
    assert TOKEN.encode() not in first.body  # the token travels only in the header


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, AuthError), (402, CreditsExhausted), (500, ProviderError), (404, ProviderError)],
)
async def test_http_errors_are_typed_and_not_retried(fake_inference: FakeInference, status: int, error: type) -> None:
    fake_inference.fail(status, times=5)
    with pytest.raises(error) as info:
        await oracle_for(fake_inference).answer("Will I pass?")
    assert len(fake_inference.requests) == 1
    assert str(info.value) == info.value.sentence == error.SENTENCE
    assert TOKEN not in info.value.detail


async def test_busy_is_retried_honouring_retry_after(fake_inference: FakeInference) -> None:
    fake_inference.fail(429, headers={"Retry-After": "1"})
    fake_inference.fail(503)
    assert await oracle_for(fake_inference).answer("Will I pass?") == "A watched pot never boils."
    first, second, third = fake_inference.requests
    assert second.received_at - first.received_at >= 0.95  # waited as Retry-After asked
    assert third.received_at > second.received_at


async def test_busy_gives_up_after_the_retry_budget(fake_inference: FakeInference) -> None:
    fake_inference.fail(503, times=10)
    with pytest.raises(ModelBusy):
        await oracle_for(fake_inference).answer("Will I pass?")
    assert len(fake_inference.requests) == FAST.retries + 1


async def test_retry_after_too_long_gives_up_at_once(fake_inference: FakeInference) -> None:
    fake_inference.fail(429, headers={"Retry-After": "3600"})
    with pytest.raises(ModelBusy):
        await oracle_for(fake_inference).answer("Will I pass?")
    assert len(fake_inference.requests) == 1


async def test_slow_answers_time_out(fake_inference: FakeInference) -> None:
    fake_inference.slow(1.0, times=5)
    with pytest.raises(InferenceTimeout):
        await oracle_for(fake_inference, retry=RetryPolicy(timeout=0.3, retries=1, base_delay=0.01)).answer("Q?")
    assert len(fake_inference.requests) == 2


async def test_slow_then_fast_recovers(fake_inference: FakeInference) -> None:
    fake_inference.slow(1.0)
    policy = RetryPolicy(timeout=0.3, retries=1, base_delay=0.01)
    assert await oracle_for(fake_inference, retry=policy).answer("Q?") == "A watched pot never boils."


async def test_malformed_json(fake_inference: FakeInference) -> None:
    fake_inference.malformed()
    with pytest.raises(ProviderError):
        await oracle_for(fake_inference).answer("Q?")


async def test_unreachable_server() -> None:
    config = OracleConfig(base_url="http://127.0.0.1:9/llm", token=TOKEN, retry=FAST)
    with pytest.raises(ProviderError):
        await Oracle(config).answer("Q?")


async def test_hostile_reply_is_sanitised(fake_inference: FakeInference) -> None:
    fake_inference.chat_reply = 'Magic 8 Ball: "@everyone <@123> the stars say yes"'
    answer = await oracle_for(fake_inference).answer("Q?")
    assert "@everyone" not in answer and "<@123>" not in answer
    assert "Magic 8 Ball" not in answer and ":" not in answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Magic 8 Ball: The early bird gets the worm.", "The early bird gets the worm."),
        ('  "Curiosity killed the cat"  ', "Curiosity killed the cat."),
        ("magic 8-ball says: patience is a virtue", "Says patience is a virtue."),
        ("Line one\n\nline two", "Line one line two."),
        ("See [the answer](https://evil.example/x) soon.", "See the answer soon."),
        ("", FOOLISH),
        ('  ""  ', FOOLISH),
        ("**Bold** moves win ~~nothing~~", "Bold moves win nothing."),
        ("# HUGE news ahead", "HUGE news ahead."),
        ("-# > small print", "Small print."),
        ("Visit https://evil.example/login for luck", "Visit for luck."),
        ("Join discord.gg/freenitro or www.evil.example today", "Join or today."),
        ("Patience\u200b is\u202e a virtue\u2060", "Patience is a virtue."),
    ],
)
def test_sanitize_examples(raw: str, expected: str) -> None:
    assert sanitize_answer(raw) == expected


@pytest.mark.parametrize("mention", ["@everyone", "@here", "<@123456789>", "<@!123456789>", "<@&987654321>"])
def test_sanitize_neutralises_mentions(mention: str) -> None:
    answer = sanitize_answer(f"Ask {mention} twice")
    assert mention not in answer
    assert mention.replace("@", "") in answer.replace("@\u200b", "").replace("<\u200b", "<")


def test_sanitize_caps_long_replies() -> None:
    answer = sanitize_answer("The river flows. " * 300)
    assert len(answer) <= MAX_ANSWER_CHARS
    assert answer.endswith(".")
    rambling = sanitize_answer("word " * 1000)
    assert len(rambling) <= MAX_ANSWER_CHARS + 1 and rambling.endswith("…")


MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NEWER_PROVIDER = {"deepinfra": {"status": "live", "providerId": MODEL, "task": "conversational"}}


def chat_through_the_client_alone() -> None:
    """What `provider="auto"` does inside huggingface_hub 0.36 (blocking: the Hub lookup is synchronous)."""

    async def chat() -> None:
        async with AsyncInferenceClient(provider="auto", api_key=TOKEN) as client:
            await client.chat_completion([{"role": "user", "content": "Hi?"}], model=MODEL)

    asyncio.run(chat())


async def test_auto_works_when_the_hub_prefers_a_provider_newer_than_the_client(
    fake_inference: FakeInference, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_constants, "ENDPOINT", fake_inference.url)
    fake_inference.provider_mapping = NEWER_PROVIDER
    with pytest.raises(ValueError, match="Provider 'deepinfra' not supported"):
        await asyncio.to_thread(chat_through_the_client_alone)
    fake_inference.requests.clear()

    router = f"{fake_inference.url}/v1"
    oracle = Oracle(OracleConfig(model=MODEL, provider="auto", token=TOKEN, router_url=router, retry=FAST))
    assert await oracle.answer("Will it work?") == fake_inference.chat_reply
    (request,) = fake_inference.requests  # straight to the router: no Hub lookup at all
    assert request.path == "/v1/chat/completions" and request.json()["model"] == MODEL
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"

    named = Oracle(OracleConfig(model=MODEL, provider="deepinfra", token=TOKEN, router_url=router, retry=FAST))
    await named.answer("And with a provider named?")
    assert fake_inference.requests[-1].json()["model"] == f"{MODEL}:deepinfra"
