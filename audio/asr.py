"""Speech → text: Whisper through the Inference API, or a self-hosted server."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from audio.errors import UserFacingError
from audio.ffmpeg import run_ffmpeg_work
from audio.formats import AudioInputError, AudioLimits, upload_to_flac
from audio.inference import ProviderError, RetryPolicy, call_with_retries, inference_client


class TranscriptionUnavailable(UserFacingError):
    """Voice questions are not possible with this configuration."""

    SENTENCE = (
        "Voice questions need speech recognition: the bot owner must set HF_TOKEN or ASR_BASE_URL. "
        "Type your question with /ask instead."
    )

    def __init__(self) -> None:
        super().__init__(self.SENTENCE)


@dataclass(frozen=True)
class TranscriberConfig:
    """Which Whisper answers and how it is reached.

    `api="hf"` posts raw FLAC the way `InferenceClient.automatic_speech_recognition` does (HF providers, Inference
    Endpoints, any server at `base_url` speaking that protocol); `api="openai"` posts multipart to
    `<base_url>/v1/audio/transcriptions` (vLLM, speaches, whisper.cpp server).
    """

    model: str = "openai/whisper-large-v3"
    provider: str = "hf-inference"
    base_url: str | None = None
    api: Literal["hf", "openai"] = "hf"
    token: str | None = field(default=None, repr=False)
    ffmpeg: str = "ffmpeg"
    limits: AudioLimits = field(default_factory=AudioLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Transcriber:
    """Turns an uploaded recording into the question it asks."""

    def __init__(self, config: TranscriberConfig) -> None:
        self.config = config
        self.available = config.token is not None or config.base_url is not None

    async def transcribe(self, data: bytes, filename: str | None = None) -> str:
        """Return the transcript of `data` (any audio ffmpeg reads).

        Raises `TranscriptionUnavailable`, `AudioInputError` or an `InferenceError` subclass.
        """
        if not self.available:
            raise TranscriptionUnavailable()
        flac = await upload_to_flac(data, self.config.limits, self.config.ffmpeg)
        call = self._openai if self.config.api == "openai" else self._hf
        text = await call_with_retries(lambda: call(flac), self.config.retry, what="speech recognition")
        text = " ".join(text.split())
        if not text:
            raise AudioInputError("I couldn't make out any words in that recording.")
        return text

    async def _hf(self, flac: bytes) -> str:
        cfg = self.config
        client = inference_client(provider=cfg.provider, token=cfg.token, timeout=cfg.retry.timeout)
        # A path gives the request its audio/flac content type; raw bytes would carry none.
        with tempfile.TemporaryDirectory(prefix="asr-") as folder:
            path = Path(folder, "question.flac")
            await run_ffmpeg_work(path.write_bytes, flac)
            async with client:
                out = await client.automatic_speech_recognition(path, model=cfg.base_url or cfg.model)
        if not isinstance(out.text, str):
            raise ProviderError("transcript without text")
        return out.text

    async def _openai(self, flac: bytes) -> str:
        cfg = self.config
        form = aiohttp.FormData()
        form.add_field("file", flac, filename="question.flac", content_type="audio/flac")
        form.add_field("model", cfg.model)
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        url = f"{(cfg.base_url or '').rstrip('/')}/v1/audio/transcriptions"
        timeout = aiohttp.ClientTimeout(total=cfg.retry.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=form, headers=headers) as response,
        ):
            response.raise_for_status()
            body = await response.json(content_type=None)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ProviderError("transcript without text")
        return text
