"""Building the services from settings: which token goes where, and no secret in reprs or logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from audio.speech.remote import RemoteEngine
from bot.client import SpeechStatus
from bot.services import build_oracle, build_speech_engine, build_transcriber, server_token
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import Scene, answered, make_settings, running_bot, spoken_question
from tests.fakes.inference import FakeInference

HF_TOKEN = "hf_secret_hub_token_1234567890"
LLM_KEY = "sk-llm-secret-key-0987654321"
ASR_KEY = "sk-asr-secret-key-1122334455"
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.secret-discord-token-abcdefghijklmnop"
SECRETS = (HF_TOKEN, LLM_KEY, ASR_KEY, DISCORD_TOKEN)


def authorization(fake: FakeInference, path: str) -> str | None:
    (request,) = [r for r in fake.requests if r.path.startswith(path)]
    return request.headers.get("Authorization")


async def test_a_hugging_face_token_never_goes_to_a_self_hosted_server(
    tmp_path: Path, fake_inference: FakeInference, ffmpeg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)  # also where huggingface_hub's clients look for a token themselves
    urls = {"llm_base_url": f"{fake_inference.url}/llm", "asr_base_url": f"{fake_inference.url}/asr"}
    settings = make_settings(tmp_path, hf_token=HF_TOKEN, **urls)
    await build_oracle(settings).answer("Will it rain?")
    await build_transcriber(settings).transcribe(spoken_question(ffmpeg), "q.ogg")
    assert authorization(fake_inference, "/llm") is None
    assert authorization(fake_inference, "/asr") is None

    fake_inference.requests.clear()
    keyed = make_settings(tmp_path, hf_token=HF_TOKEN, llm_api_key=LLM_KEY, asr_api_key=ASR_KEY, **urls)
    await build_oracle(keyed).answer("Will it rain?")
    await build_transcriber(keyed).transcribe(spoken_question(ffmpeg), "q.ogg")
    assert authorization(fake_inference, "/llm") == f"Bearer {LLM_KEY}"
    assert authorization(fake_inference, "/asr") == f"Bearer {ASR_KEY}"


def test_hugging_face_hosts_get_the_hugging_face_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, hf_token=HF_TOKEN)
    for url in (None, "https://router.huggingface.co/v1", "https://abc.us-east-1.aws.endpoints.huggingface.cloud"):
        assert server_token(url, None, settings.hf_token) == HF_TOKEN
    for url in ("http://127.0.0.1:8000", "https://huggingface.co.evil.example/v1", "http://localhost:11434"):
        assert server_token(url, None, settings.hf_token) is None


async def test_no_repr_or_log_line_of_a_configured_bot_holds_a_secret(
    scene: Scene, tmp_path: Path, fake_inference: FakeInference, ffmpeg: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        tmp_path,
        discord_token=DISCORD_TOKEN,
        hf_token=HF_TOKEN,
        llm_api_key=LLM_KEY,
        asr_api_key=ASR_KEY,
        llm_base_url=f"{fake_inference.url}/llm",
        asr_base_url=f"{fake_inference.url}/asr",
    )
    oracle, transcriber = build_oracle(settings), build_transcriber(settings)
    async with running_bot(scene.emu, settings, oracle=oracle, transcriber=transcriber) as bot:
        record = await scene.ask_recording(spoken_question(ffmpeg))
        await record.wait_for(answered, 30)
        fake_inference.fail(401)
        refused = await scene.ask("And with a refused key?", user=scene.mod)
        await refused.wait_for(lambda r: r.followups, 30)
        reprs = [repr(bot.settings), repr(oracle.config), repr(transcriber.config), repr(oracle), repr(transcriber)]
    assert len(fake_inference.requests) == 3  # the secrets were configured and used
    logged = [record.getMessage() for record in caplog.records] + [caplog.text]
    for text in reprs + logged:
        assert not [secret for secret in SECRETS if secret in text], text


async def test_the_bot_closes_the_engine_it_built_and_leaves_a_given_one_open(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built, given = SineEngine(), SineEngine()
    monkeypatch.setattr("bot.client.build_speech_engine", lambda settings: built)
    async with running_bot(scene.emu, make_settings(tmp_path, tts_enabled=True)) as bot:
        await until(lambda: bot.speech_status is SpeechStatus.READY, 30)
        assert not built.closed
    assert built.closed
    async with running_bot(scene.emu, make_settings(tmp_path), tts=given):
        pass
    assert not given.closed  # a caller's engine (shared by tests, the CLI) outlives the bot


def test_the_remote_speech_limits_come_from_the_settings(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"  # nothing is asked of it: the rate is configured
    settings = make_settings(tmp_path, tts_base_url=url, tts_sample_rate=24000, tts_total_timeout=7)
    engine = build_speech_engine(settings)
    try:
        assert isinstance(engine, RemoteEngine) and engine.config.deadline("Yes.") == 7
    finally:
        engine.close()
    with pytest.raises(ValidationError, match="tts_sample_rate"):
        make_settings(tmp_path, tts_sample_rate=1)
