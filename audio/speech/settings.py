"""The `TTS_*` settings that load the Parler-TTS model, shared by the bot's and the speech server's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from audio.speech.voice import TTSConfig


class SpeechModelSettings(BaseSettings):
    """Which checkpoint, where and how it runs; subclasses add their own fields and `model_config`."""

    tts_model: str = "parler-tts/parler-mini-v1-jenny"
    tts_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    tts_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    tts_attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    # The batched engine: answers per batch (empty: 32 on CUDA, 8 on CPU), frames per sentence, int8 on CPU.
    tts_max_batch: int | None = Field(None, ge=1, le=256)
    tts_max_frames: int | None = Field(None, ge=16)
    tts_quantize: Literal["none", "int8"] = "none"
    # The CPU decoding path: measured at load (auto) or forced.
    tts_cpu_path: Literal["auto", "fp32", "packed", "int8", "bf16"] = "auto"

    def tts_config(self) -> TTSConfig:
        """The engine configuration these settings describe."""
        return TTSConfig(
            model=self.tts_model,
            device=self.tts_device,
            dtype=self.tts_dtype,
            attn_implementation=self.tts_attn_implementation,
            max_batch=self.tts_max_batch,
            max_frames=self.tts_max_frames,
            quantize=self.tts_quantize,
            cpu_path=self.tts_cpu_path,
        )
