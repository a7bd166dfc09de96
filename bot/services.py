"""Build the audio-side services (no Discord types) from the bot's settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from audio.asr import Transcriber, TranscriberConfig
from audio.ffmpeg import ffmpeg_exe
from audio.formats import AudioLimits
from audio.inference import RetryPolicy
from audio.oracle import Oracle, OracleConfig
from bot.settings import Settings

if TYPE_CHECKING:
    from audio.speech import TTSConfig

log = logging.getLogger(__name__)


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def retry_policy(settings: Settings) -> RetryPolicy:
    """The Inference API timeout and retry budget."""
    return RetryPolicy(timeout=settings.inference_timeout, retries=settings.inference_retries)


def audio_limits(settings: Settings) -> AudioLimits:
    """Limits on uploaded questions."""
    return AudioLimits(max_bytes=settings.max_voice_bytes, max_seconds=settings.max_voice_seconds)


def build_oracle(settings: Settings) -> Oracle:
    """The question → proverb service; logs once when it runs on the classic twenty answers."""
    oracle = Oracle(
        OracleConfig(
            model=settings.llm_model,
            provider=settings.llm_provider,
            base_url=settings.llm_base_url,
            token=_secret(settings.llm_api_key) or _secret(settings.hf_token),
            retry=retry_policy(settings),
        )
    )
    if oracle.offline:
        log.info("No HF_TOKEN or LLM_BASE_URL set: answering with the classic Magic 8 Ball's twenty answers.")
    return oracle


def build_transcriber(settings: Settings) -> Transcriber:
    """The speech → text service (checks the ffmpeg binary once)."""
    transcriber = Transcriber(
        TranscriberConfig(
            model=settings.asr_model,
            provider=settings.asr_provider,
            base_url=settings.asr_base_url,
            api=settings.asr_api,
            token=_secret(settings.hf_token),
            ffmpeg=ffmpeg_exe(settings.ffmpeg_path),
            limits=audio_limits(settings),
            retry=retry_policy(settings),
        )
    )
    if not transcriber.available:
        log.info("No HF_TOKEN or ASR_BASE_URL set: voice questions are disabled.")
    return transcriber


def tts_config(settings: Settings) -> TTSConfig:
    """The Parler-TTS engine configuration (imported lazily: text-only paths never load torch)."""
    from audio.speech import TTSConfig

    return TTSConfig(
        model=settings.tts_model,
        device=settings.tts_device,
        dtype=settings.tts_dtype,
        attn_implementation=settings.tts_attn_implementation,
        max_batch=settings.tts_max_batch,
        max_frames=settings.tts_max_frames,
        quantize=settings.tts_quantize,
    )
