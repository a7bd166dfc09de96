"""Speech recognition: FLAC requests to the Inference API or an OpenAI-compatible server, and failures."""

from __future__ import annotations

import pytest

from audio.asr import Transcriber, TranscriberConfig, TranscriptionUnavailable
from audio.formats import AudioInputError, AudioLimits
from audio.inference import AuthError, ModelBusy, RetryPolicy
from tests.audio.helpers import decode
from tests.fakes.audio_files import encode, speechlike
from tests.fakes.inference import FakeInference

TOKEN = "hf_asr_secret_token_42"


def transcriber(fake: FakeInference, ffmpeg: str, *, api: str = "hf", token: str | None = TOKEN) -> Transcriber:
    base = f"{fake.url}/asr" if api == "hf" else f"{fake.url}/openai"
    return Transcriber(
        TranscriberConfig(
            base_url=base,
            api=api,  # type: ignore[arg-type]
            token=token,
            ffmpeg=ffmpeg,
            limits=AudioLimits(max_bytes=1_000_000, max_seconds=10),
            retry=RetryPolicy(timeout=5, retries=1, base_delay=0.05),
        )
    )


async def test_voice_message_is_sent_as_flac(fake_inference: FakeInference, ffmpeg: str) -> None:
    fake_inference.transcript = "  Should I   adopt a dog? "
    text = await transcriber(fake_inference, ffmpeg).transcribe(encode(speechlike(2.0), "ogg", ffmpeg), "voice.ogg")
    assert text == "Should I adopt a dog?"
    (request,) = fake_inference.requests
    assert request.path == "/asr"
    assert request.headers["Content-Type"] == "audio/flac"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.body[:4] == b"fLaC"
    assert TOKEN.encode() not in request.body


async def test_openai_compatible_server_gets_multipart(fake_inference: FakeInference, ffmpeg: str) -> None:
    text = await transcriber(fake_inference, ffmpeg, api="openai", token=None).transcribe(
        encode(speechlike(1.0), "mp3", ffmpeg)
    )
    assert text == fake_inference.transcript
    (request,) = fake_inference.requests
    assert request.path == "/openai/v1/audio/transcriptions"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert "Authorization" not in request.headers
    assert b'filename="question.flac"' in request.body and b"Content-Type: audio/flac" in request.body
    assert b"fLaC" in request.body


async def test_no_token_means_no_voice_questions(ffmpeg: str) -> None:
    offline = Transcriber(TranscriberConfig(ffmpeg=ffmpeg))
    assert not offline.available
    with pytest.raises(TranscriptionUnavailable, match="HF_TOKEN"):
        await offline.transcribe(b"anything")


async def test_bad_audio_never_reaches_the_api(fake_inference: FakeInference, ffmpeg: str) -> None:
    service = transcriber(fake_inference, ffmpeg)
    for data in (b"", b"plain text, not audio" * 50, encode(speechlike(15.0), "ogg", ffmpeg)):
        with pytest.raises(AudioInputError):
            await service.transcribe(data)
    assert fake_inference.requests == []


async def test_empty_transcript_is_a_clear_error(fake_inference: FakeInference, ffmpeg: str) -> None:
    fake_inference.transcript = "   "
    with pytest.raises(AudioInputError, match="couldn't make out any words"):
        await transcriber(fake_inference, ffmpeg).transcribe(encode(speechlike(1.0), "wav", ffmpeg))


async def test_api_faults_are_typed(fake_inference: FakeInference, ffmpeg: str) -> None:
    data = encode(speechlike(1.0), "ogg", ffmpeg)
    fake_inference.fail(401)
    with pytest.raises(AuthError):
        await transcriber(fake_inference, ffmpeg).transcribe(data)
    fake_inference.fail(503, times=2)
    with pytest.raises(ModelBusy):
        await transcriber(fake_inference, ffmpeg).transcribe(data)
    fake_inference.fail(429, headers={"Retry-After": "0"})
    assert await transcriber(fake_inference, ffmpeg).transcribe(data) == fake_inference.transcript


async def test_live_samples_are_sent_as_flac_without_touching_the_disk(
    fake_inference: FakeInference, ffmpeg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("live audio was written to a temporary file")

    monkeypatch.setattr("tempfile.mkdtemp", no_files)
    samples = speechlike(1.5, sample_rate=16_000)
    text = await transcriber(fake_inference, ffmpeg).transcribe_samples(samples)
    assert text == fake_inference.transcript
    (request,) = fake_inference.requests
    assert request.body[:4] == b"fLaC"
    heard = decode(request.body, ffmpeg)
    assert len(heard) == pytest.approx(1.5 * 48_000, abs=48)
    with pytest.raises(TranscriptionUnavailable):
        await Transcriber(TranscriberConfig(ffmpeg=ffmpeg)).transcribe_samples(samples)
