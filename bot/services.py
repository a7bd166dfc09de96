"""Build the audio-side services (no Discord types) from the bot's settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from audio.asr import Transcriber, TranscriberConfig
from audio.ffmpeg import ffmpeg_exe
from audio.formats import AudioLimits
from audio.inference import RetryPolicy, is_hf_host
from audio.oracle import Oracle, OracleConfig
from audio.speech import SpeechEngine, load_engine
from audio.speech.remote import RemoteConfig, RemoteEngine
from bot.questions import QuestionRules
from bot.settings import Settings

if TYPE_CHECKING:
    from pydantic import SecretStr

log = logging.getLogger(__name__)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def server_token(base_url: str | None, api_key: SecretStr | None, hf_token: SecretStr | None) -> str | None:
    """The token for a service: HF_TOKEN for Hugging Face hosts (or no base URL at all), else the server's own
    key (or none): a Hugging Face token never travels to a self-hosted server."""
    if base_url is None or is_hf_host(base_url):
        return _secret(api_key) or _secret(hf_token)
    return _secret(api_key)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The Inference API timeout and retry budget."""
    return RetryPolicy(timeout=settings.inference_timeout, retries=settings.inference_retries)


def audio_limits(settings: Settings) -> AudioLimits:
    """Limits on uploaded questions."""
    return AudioLimits(max_bytes=settings.max_voice_bytes, max_seconds=settings.max_voice_seconds)


def question_rules(settings: Settings) -> QuestionRules:
    """The cleaning and limits every question passes, in Discord and on the command line."""
    return QuestionRules(settings.max_question_chars, audio_limits(settings))


def build_oracle(settings: Settings) -> Oracle:
    """The question → proverb service; logs once when it runs on the classic twenty answers."""
    oracle = Oracle(
        OracleConfig(
            model=settings.llm_model,
            provider=settings.llm_provider,
            base_url=settings.llm_base_url,
            token=server_token(settings.llm_base_url, settings.llm_api_key, settings.hf_token),
            router_url=settings.hf_router_url,
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
            token=server_token(settings.asr_base_url, settings.asr_api_key, settings.hf_token),
            ffmpeg=ffmpeg_exe(settings.ffmpeg_path),
            limits=audio_limits(settings),
            retry=retry_policy(settings),
        )
    )
    if not transcriber.available:
        log.info("No HF_TOKEN or ASR_BASE_URL set: voice questions are disabled.")
    return transcriber


def build_speech_engine(settings: Settings) -> SpeechEngine:
    """The remote engine when `TTS_BASE_URL` is set, else the in-process model. Blocking; raises on failure."""
    if settings.tts_base_url is None:
        return load_engine(settings.tts_config())
    engine = RemoteEngine.connect(
        RemoteConfig(
            base_url=settings.tts_base_url,
            model=settings.tts_model,
            api_key=_secret(settings.tts_api_key),
            timeout=settings.tts_timeout,
            sample_rate=settings.tts_sample_rate,
            voice=settings.tts_remote_voice,
            max_streams=settings.tts_remote_streams,
            total_timeout=settings.tts_total_timeout,
        )
    )
    log.info("Speaking through %r", engine)
    return engine
