"""Typed settings, read once from the environment and `.env`."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from audio.speech import DEFAULT_SEED, JENNY_DESCRIPTION
from audio.speech.settings import SpeechModelSettings


class Settings(SpeechModelSettings):
    """Every knob of the bot (the speech model's come from `SpeechModelSettings`). Secrets are `SecretStr` so they
    never print."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Discord
    discord_token: SecretStr | None = None
    dev_guild_id: int | None = None
    message_content_intent: bool = False
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///magic8ball.db")  # may hold a PostgreSQL password

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
    asr_api_key: SecretStr | None = None  # sent to ASR_BASE_URL (HF_TOKEN goes to Hugging Face hosts only)
    hf_router_url: str = "https://router.huggingface.co/v1"  # chat completions when LLM_BASE_URL is unset
    inference_timeout: float = Field(30.0, gt=0)
    inference_retries: int = Field(3, ge=0, le=10)

    # Text to speech
    tts_enabled: bool = True
    tts_voice_description: str = JENNY_DESCRIPTION
    tts_seed: int = DEFAULT_SEED
    tts_queue_size: int = Field(16, ge=1)
    # One guild's share of the speech engine: answers waiting, and answers generating at once.
    tts_queue_per_guild: int = Field(4, ge=1)
    tts_slots_per_guild: int = Field(2, ge=1)
    # Remote speech: an OpenAI-compatible /v1/audio/speech server (e.g. `audio.serve`) instead of the local model.
    tts_base_url: str | None = None
    tts_api_key: SecretStr | None = None
    tts_timeout: float = Field(30.0, gt=0)
    tts_remote_voice: str | None = None
    tts_sample_rate: int | None = Field(None, ge=8000, le=192_000)
    tts_remote_streams: int = Field(8, ge=1)
    tts_total_timeout: float | None = Field(None, gt=0)  # one whole remote answer; empty: 60 s + 3x its audio cap

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

    # Questions a guild may have in flight at once (transcribing, consulting, speaking).
    guild_concurrency: int = Field(3, ge=1)
    # How long to wait for a dropped voice connection to come back before moving on.
    voice_reconnect_seconds: float = Field(20.0, gt=0)

    # Production: shards of this process (empty count = Discord's recommendation), metrics port, log format.
    shard_count: int | None = Field(None, ge=1)
    shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # this machine only; 0.0.0.0 exposes it (no authentication)
    log_format: Literal["text", "json"] = "text"

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _parse_shard_ids(cls, value: object, info: ValidationInfo) -> object:
        """`0-3` or `4,5` (or both, `0-3,8`) → sorted shard numbers, each below SHARD_COUNT."""
        if not isinstance(value, str):
            return value
        count = info.data.get("shard_count")
        if count is None:
            raise ValueError("SHARD_IDS needs SHARD_COUNT: set the total number of shards of all processes too.")
        ids: set[int] = set()
        for part in value.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
            if first > last or last >= count:
                raise ValueError(
                    f"SHARD_IDS must list shard numbers below SHARD_COUNT ({count}) like 0-3 or 4,5, not {value!r}."
                )
            ids.update(range(first, last + 1))
        return tuple(sorted(ids))

    # Recordings downloaded and transcribed at once, all guilds together (bounds the memory uploads hold).
    max_concurrent_transcriptions: int = Field(4, ge=1)

    # Graceful shutdown: on SIGTERM, seconds until the process has exited (answers in flight get two thirds).
    shutdown_seconds: float = Field(15.0, gt=0)

    # At start-up, seconds to keep retrying a database that can't be reached yet (e.g. starting with the bot).
    database_connect_seconds: float = Field(30.0, ge=0)
    # Asking aloud in the voice channel (/ask with nothing, and open mic where a server turns it on).
    listen_enabled: bool = True  # off: the bot joins deafened and never decodes anyone's audio
    listen_start_seconds: float = Field(8.0, gt=0)  # /ask: how long to wait for the member to start speaking
    listen_silence_seconds: float = Field(0.8, ge=0.1)  # this much silence ends a question
    listen_max_seconds: float = Field(15.0, gt=0, le=60)  # an utterance is cut here, however long the talk
    listen_max_members: int = Field(8, ge=1)  # open mic: members listened to at once in one guild


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
