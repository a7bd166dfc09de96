"""Typed settings, read once from the environment and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

JENNY_DESCRIPTION = (
    "Jenny speaks at an average pace with a calm delivery in a very confined sounding environment "
    "with clear audio quality."
)


class Settings(BaseSettings):
    """Every knob of the bot. Secrets are `SecretStr` so they never print."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Discord
    discord_token: SecretStr | None = None
    dev_guild_id: int | None = None
    message_content_intent: bool = False
    database_url: str = "sqlite+aiosqlite:///magic8ball.db"

    # Hugging Face Inference API / self-hosted servers
    hf_token: SecretStr | None = None
    asr_model: str = "openai/whisper-large-v3"
    asr_provider: str = "hf-inference"
    asr_base_url: str | None = None
    asr_api: Literal["hf", "openai"] = "hf"
    llm_model: str = "meta-llama/Llama-3.1-8B-Instruct"
    llm_provider: str = "auto"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    inference_timeout: float = Field(30.0, gt=0)
    inference_retries: int = Field(3, ge=0, le=10)

    # Text to speech
    tts_enabled: bool = True
    tts_model: str = "parler-tts/parler-mini-v1-jenny"
    tts_voice_description: str = JENNY_DESCRIPTION
    tts_seed: int = 42
    tts_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    tts_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    tts_attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    tts_queue_size: int = Field(16, ge=1)
    # One guild's share of the speech engine: answers waiting, and answers generating at once.
    tts_queue_per_guild: int = Field(4, ge=1)
    tts_slots_per_guild: int = Field(2, ge=1)
    # The batched speech server: answers per batch (empty: 32 on CUDA, 8 on CPU), frames per sentence, int8 on CPU.
    tts_max_batch: int | None = Field(None, ge=1, le=256)
    tts_max_frames: int | None = Field(None, ge=16)
    tts_quantize: Literal["none", "int8"] = "none"

    # Audio tooling
    ffmpeg_path: Path | None = None

    # Limits
    max_question_chars: int = Field(300, ge=1, le=2000)
    max_voice_seconds: float = Field(60.0, gt=0)
    max_voice_bytes: int = Field(8 * 1024 * 1024, gt=0)
    cooldown_seconds: float = Field(10.0, ge=0)
    guild_queue_size: int = Field(5, ge=1)
    voice_idle_seconds: float = Field(300.0, gt=0)

    log_level: str = "INFO"

    # Added by the bot helper: questions a guild may have in flight at once (transcribing, consulting, speaking).
    guild_concurrency: int = Field(3, ge=1)
    # Added by the bot helper: how long to wait for a dropped voice connection to come back before moving on.
    voice_reconnect_seconds: float = Field(20.0, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
