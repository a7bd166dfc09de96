"""Speech → text: Whisper through the Inference API, or a self-hosted server."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import numpy as np
from huggingface_hub import AsyncInferenceClient

from audio.errors import UserFacingError
from audio.ffmpeg import run_upload_work
from audio.formats import ASR_SAMPLE_RATE, AudioInputError, AudioLimits, encode_flac, upload_to_flac
from audio.inference import ProviderError, RetryPolicy, call_with_retries, post


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
        return await self._recognise(await upload_to_flac(data, self.config.limits, self.config.ffmpeg))

    async def transcribe_samples(self, samples: np.ndarray, sample_rate: int = ASR_SAMPLE_RATE) -> str:
        """Return the transcript of float mono `samples` (heard live): encoded through pipes, never a file.

        Raises like `transcribe`.
        """
        if not self.available:
            raise TranscriptionUnavailable()
        return await self._recognise(await encode_flac(samples, self.config.ffmpeg, sample_rate))

    async def _recognise(self, flac: bytes) -> str:
        call = self._openai if self.config.api == "openai" else self._hf
        text = await call_with_retries(lambda: call(flac), self.config.retry, what="speech recognition")
        text = " ".join(text.split())
        if not text:
            raise AudioInputError("I couldn't make out any words in that recording.")
        return text

    async def _hf(self, flac: bytes) -> str:
        """Raw FLAC, as `automatic_speech_recognition` posts it: to `base_url`, or through the HF provider."""
        cfg = self.config
        if cfg.base_url:
            out = await post(
                cfg.base_url, token=cfg.token, timeout=cfg.retry.timeout, data=flac, content_type="audio/flac"
            )
            text = out.get("text") if isinstance(out, dict) else None
        else:
            client = AsyncInferenceClient(provider=cfg.provider, api_key=cfg.token, timeout=cfg.retry.timeout)  # type: ignore[arg-type]
            # A path gives the request its audio/flac content type; raw bytes would carry none.
            with tempfile.TemporaryDirectory(prefix="asr-") as folder:
                path = Path(folder, "question.flac")
                await run_upload_work(path.write_bytes, flac)
                async with client:
                    text = (await client.automatic_speech_recognition(path, model=cfg.model)).text
        if not isinstance(text, str):
            raise ProviderError("transcript without text")
        return text

    async def _openai(self, flac: bytes) -> str:
        """Multipart to `<base_url>/v1/audio/transcriptions`."""
        cfg = self.config
        form = aiohttp.FormData()
        form.add_field("file", flac, filename="question.flac", content_type="audio/flac")
        form.add_field("model", cfg.model)
        url = f"{(cfg.base_url or '').rstrip('/')}/v1/audio/transcriptions"
        out = await post(url, token=cfg.token, timeout=cfg.retry.timeout, data=form)
        text = out.get("text") if isinstance(out, dict) else None
        if not isinstance(text, str):
            raise ProviderError("transcript without text")
        return text
