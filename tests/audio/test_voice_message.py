"""Voice-message encoding: OGG/Opus 48 kHz mono that ffmpeg decodes, duration and a 256-point waveform."""

from __future__ import annotations

import base64
import struct
import subprocess

import numpy as np
import pytest

from audio.voice_message import VoiceMessage, encode_voice_message, waveform
from tests.fakes.audio_files import speechlike

pytestmark = pytest.mark.timeout(60)


def _decode(ogg: bytes, ffmpeg: str) -> tuple[np.ndarray, str]:
    """Decode at the stream's own rate and channel count; returns the samples and ffmpeg's stream line."""
    cmd = [ffmpeg, "-hide_banner", "-i", "pipe:0", "-f", "f32le", "pipe:1"]
    done = subprocess.run(cmd, input=ogg, capture_output=True, check=True)
    stream = next(line for line in done.stderr.decode().splitlines() if "Audio:" in line)
    return np.frombuffer(done.stdout, "<f4"), stream


def _opus_head(ogg: bytes) -> tuple[int, int]:
    """(channels, input sample rate) from the OpusHead packet."""
    start = ogg.index(b"OpusHead") + 8
    _version, channels, _pre_skip, rate = struct.unpack_from("<BBHI", ogg, start)
    return channels, rate


@pytest.mark.parametrize("sample_rate", [24_000, 44_100])
def test_voice_message_is_ogg_opus_mono_that_decodes_to_the_same_length(sample_rate: int, ffmpeg: str) -> None:
    samples = speechlike(2.5, sample_rate)
    message = encode_voice_message(samples, sample_rate)
    assert message.ogg.startswith(b"OggS")
    assert _opus_head(message.ogg) == (1, 48_000)
    decoded, stream = _decode(message.ogg, ffmpeg)
    assert "opus" in stream and "48000 Hz" in stream and "mono" in stream
    assert message.duration_secs == pytest.approx(2.5, abs=1 / sample_rate)
    assert len(decoded) / 48_000 == pytest.approx(message.duration_secs, abs=0.02)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(decoded) == pytest.approx(rms(samples), rel=0.15)


def test_waveform_tracks_loudness() -> None:
    rate, steps = 16_000, np.array([0.0, 0.1, 0.2, 0.4, 0.8, 0.6, 0.3, 0.05])
    t = np.arange(8 * rate) / rate
    envelope = np.repeat(steps, rate)  # one second per step: 32 waveform points each
    tone = np.sin(2 * np.pi * 320 * t)  # whole periods in each point's 500 samples
    message = encode_voice_message((envelope * tone).astype(np.float32), rate)
    points = np.frombuffer(message.waveform, np.uint8).astype(int)
    assert len(message.waveform) == 256
    expected = np.repeat(np.rint(steps / steps.max() * 255), 32)
    assert np.abs(points - expected).max() <= 2
    assert base64.b64decode(message.waveform_b64()) == message.waveform


def test_waveform_of_silence_and_of_very_short_audio() -> None:
    assert waveform(np.zeros(1000, np.float32)) == bytes(256)
    short = waveform(np.full(10, 0.5, np.float32))  # fewer samples than points: the rest reads as silence
    assert len(short) == 256 and short[:10] == b"\xff" * 10 and short[10:] == bytes(246)


def test_voice_message_is_frozen_and_describes_its_upload() -> None:
    message = encode_voice_message(speechlike(0.3, 24_000), 24_000)
    assert isinstance(message, VoiceMessage)
    assert (VoiceMessage.CONTENT_TYPE, VoiceMessage.FILENAME) == ("audio/ogg", "voice-message.ogg")
    with pytest.raises(AttributeError):
        message.duration_secs = 1.0  # type: ignore[misc]


def test_invalid_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        encode_voice_message(np.zeros(0, np.float32), 24_000)
    with pytest.raises(ValueError, match="mono"):
        encode_voice_message(np.zeros((2, 100), np.float32), 24_000)
    with pytest.raises(ValueError, match="positive"):
        encode_voice_message(np.zeros(100, np.float32), 0)
