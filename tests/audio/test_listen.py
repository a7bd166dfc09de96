"""Listening without Discord: RTP parsing and decryption, the jitter buffer, Opus decoding, voice activity,
utterance cutting and the wake phrase."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from audio.formats import to_pcm16
from audio.listen.jitter import JitterBuffer
from audio.listen.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder
from audio.listen.rtp import (
    DAVE_MARKER,
    XCHACHA,
    Dave,
    PacketError,
    decrypt_transport,
    is_rtcp,
    open_frame,
    parse_header,
    peek_ssrc,
)
from audio.listen.segmenter import Segmenter, SegmenterConfig
from audio.listen.stream import MemberStream
from audio.listen.vad import WebRtcVad
from audio.listen.wake import after_wake_phrase
from tests.emulator.speaker import OPUS_SILENCE, opus_frames, rtp_packet
from tests.fakes.audio_files import speechlike

KEY = os.urandom(32)


def test_rtp_packet_with_header_extension_parses_and_decrypts_to_its_payload() -> None:
    packet = rtp_packet(XCHACHA, KEY, 65535, 2**32 - 960, 1234, b"opus-frame", 7)
    header = parse_header(packet)
    assert (header.sequence, header.timestamp, header.ssrc, header.payload_type) == (65535, 2**32 - 960, 1234, 0x78)
    assert header.extension and header.header_length == 16
    assert peek_ssrc(packet) == 1234
    assert decrypt_transport(packet, header, XCHACHA, KEY) == b"opus-frame"


def test_tampered_packet_wrong_key_and_rtcp_are_refused() -> None:
    packet = bytearray(rtp_packet(XCHACHA, KEY, 1, 960, 5, b"frame", 1))
    with pytest.raises(PacketError):
        decrypt_transport(bytes(packet), parse_header(bytes(packet)), XCHACHA, os.urandom(32))
    packet[20] ^= 1
    with pytest.raises(PacketError):
        decrypt_transport(bytes(packet), parse_header(bytes(packet)), XCHACHA, KEY)
    report = bytes([0x81, 201]) + bytes(40)
    assert is_rtcp(report) and peek_ssrc(report) is None
    with pytest.raises(PacketError):
        parse_header(b"\x00" * 40)  # not version 2
    with pytest.raises(PacketError):
        decrypt_transport(bytes(packet), parse_header(bytes(packet)), "aead_aes256_gcm_rtpsize", KEY)


def test_dave_frames_are_decrypted_passthrough_kept_and_unreadable_dropped() -> None:
    passthrough = {1}

    def decrypt(user_id: int, frame: bytes) -> bytes:
        if not frame.endswith(DAVE_MARKER) or frame.startswith(b"no-key"):
            raise RuntimeError("no cryptor")
        return frame[:-2].upper()

    dave = Dave(decrypt, lambda user_id: user_id in passthrough)
    assert open_frame(b"abc" + DAVE_MARKER, 1, dave) == b"ABC"
    assert open_frame(b"plain", 1, dave) == b"plain"  # passthrough around a transition
    assert open_frame(b"plain", 2, dave) is None  # not allowed for this sender now: injected, not sent
    assert open_frame(b"no-key" + DAVE_MARKER, 1, dave) is None  # a new sender's first frames
    assert open_frame(b"plain", 1, None) == b"plain"  # no DAVE session: plain Opus


def test_jitter_buffer_reorders_within_its_depth_and_fills_gaps_with_silence() -> None:
    buffer = JitterBuffer(depth=2)
    out = []
    for seq in (10, 12, 12, 11, 13, 15, 16, 17):  # 12 twice; 11 late but in the window; 14 lost
        out += buffer.push(seq, seq * 960, bytes([seq]))
    out += buffer.flush()
    assert out == [bytes([10]), bytes([11]), bytes([12]), bytes([13]), None, bytes([15]), bytes([16]), bytes([17])]
    assert buffer.stats.missing_frames == 1 and buffer.stats.duplicates == 1
    assert buffer.push(12, 12 * 960, b"x") == [] and buffer.stats.late == 1


def test_jitter_buffer_wraps_sequence_and_timestamp_and_caps_pauses() -> None:
    buffer = JitterBuffer(depth=0, max_gap_frames=5)
    assert buffer.push(65535, 2**32 - 960, b"a") == [b"a"]
    assert buffer.push(0, 0, b"b") == [b"b"]  # both wrap: consecutive
    assert buffer.push(1, 100 * 960, b"c") == [None] * 5 + [b"c"]  # a long pause, capped
    assert buffer.push(1, 100 * 960, b"c") == [] and buffer.stats.late == 1  # already played out


def test_jitter_buffer_never_holds_more_than_its_depth() -> None:
    buffer = JitterBuffer(depth=3)
    released = 0
    for seq in range(0, 400, 2):  # every other packet lost
        released += len([f for f in buffer.push(seq, seq * 960, b"f") if f])
        assert len(buffer) <= 3
    assert released + len(buffer) == 200


def test_opus_decoder_gives_16khz_mono_and_silence_for_missing_frames() -> None:
    decoder = OpusDecoder()
    tone = speechlike(0.4)
    pcm = np.concatenate([decoder.decode(frame) for frame in opus_frames(tone)])
    assert abs(len(pcm) - 0.4 * SAMPLE_RATE) <= FRAME_SAMPLES  # the resampler's delay and the encoder's padding
    assert np.abs(pcm).max() > 3000
    assert not decoder.decode(None).any() and len(decoder.decode(None)) == FRAME_SAMPLES
    assert not decoder.decode(b"\xff\xff\xff garbage").any()


def frames_of(samples: np.ndarray) -> list[np.ndarray]:
    """Float audio at 48 kHz as 20 ms int16 frames at 16 kHz (plain decimation: enough for the detector)."""
    pcm = to_pcm16(samples[::3])
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME_SAMPLES, np.int16)])
    return list(pcm.reshape(-1, FRAME_SAMPLES))


def test_webrtc_vad_hears_the_speechlike_recording_and_not_silence_or_faint_noise() -> None:
    vad = WebRtcVad()
    speech = frames_of(speechlike(1.0))
    noise = frames_of(np.random.default_rng(1).normal(0, 0.002, 48_000).astype(np.float32))
    assert sum(vad.is_speech(f) for f in speech) >= 0.8 * len(speech)
    assert sum(vad.is_speech(f) for f in noise) <= 0.1 * len(noise)
    assert not vad.is_speech(np.zeros(FRAME_SAMPLES, np.int16))
    with pytest.raises(ValueError):
        vad.is_speech(np.zeros(100, np.int16))


def feed(segmenter: Segmenter, pattern: str) -> list:
    """Feed frames marked speech ('s') or silence ('.'); returns the utterances that ended."""
    ended = []
    for index, mark in enumerate(pattern):
        frame = np.full(FRAME_SAMPLES, index, np.int16)
        if (utterance := segmenter.feed(frame, mark == "s")) is not None:
            ended.append(utterance)
    return ended


def test_segmenter_starts_on_sustained_speech_keeps_a_preroll_and_ends_on_silence() -> None:
    config = SegmenterConfig(silence_seconds=0.1, max_seconds=10, onset_frames=3, preroll_frames=2, tail_frames=1)
    segmenter = Segmenter(config)
    assert feed(segmenter, "..s.s..") == [] and not segmenter.started  # clicks are not speech
    (utterance,) = feed(segmenter, "sss" + "s.s" + ".....")
    assert utterance.reason == "silence"
    # two preroll frames, six of speech and gaps, one frame of tail: nothing of the silence beyond it
    assert len(utterance.pcm) == (2 + 6 + 1) * FRAME_SAMPLES
    assert not segmenter.started


def test_segmenter_cuts_a_monologue_at_max_seconds_and_starts_again() -> None:
    segmenter = Segmenter(SegmenterConfig(silence_seconds=0.2, max_seconds=0.5, onset_frames=1, preroll_frames=0))
    ended = feed(segmenter, "s" * 60)
    assert [u.reason for u in ended] == ["max", "max"]
    assert all(u.seconds == pytest.approx(0.5) for u in ended)
    assert segmenter.started  # the rest of the monologue goes on (the bot decides whether to keep listening)


def test_segmenter_finish_ends_an_utterance_when_the_sender_goes_quiet() -> None:
    segmenter = Segmenter(SegmenterConfig(onset_frames=1, preroll_frames=0))
    assert segmenter.finish() is None
    feed(segmenter, "ss")
    utterance = segmenter.finish()
    assert utterance is not None and len(utterance.pcm) == 2 * FRAME_SAMPLES


def packets(samples: np.ndarray, first_seq: int = 100) -> list[tuple[int, int, bytes]]:
    frames = [*opus_frames(samples), *[OPUS_SILENCE] * 5]
    return [(first_seq + i, 7 + i * 960, frame) for i, frame in enumerate(frames)]


@pytest.mark.parametrize("loss,reorder", [(0.0, 0.0), (0.05, 0.05)])
def test_member_stream_cuts_one_utterance_of_the_spoken_length(loss: float, reorder: float) -> None:
    rng = random.Random(3)
    audio = np.concatenate([np.zeros(24_000, np.float32), speechlike(1.5), np.zeros(4_800, np.float32)])
    sent = [p for p in packets(audio) if rng.random() >= loss]
    for i in range(len(sent) - 1):
        if rng.random() < reorder:
            sent[i], sent[i + 1] = sent[i + 1], sent[i]
    stream = MemberStream(SegmenterConfig(silence_seconds=0.8), WebRtcVad())
    ended = []
    for index, (seq, ts, frame) in enumerate(sent):
        ended += stream.push(seq, ts, frame, now=index * 0.02)
    assert stream.speaking and not ended  # only 0.2 s of silence followed
    assert stream.quiet(now=len(sent) * 0.02) == []  # too soon
    (utterance,) = stream.quiet(now=len(sent) * 0.02 + 1.0)
    assert utterance.reason == "silence"
    assert 1.4 <= utterance.seconds <= 1.5 + 0.2 + 0.2 + 0.1  # the speech, with its preroll and tail
    assert not stream.speaking


@pytest.mark.parametrize(
    "transcript,question",
    [
        ("Eight ball, will it snow?", "will it snow?"),
        ("Magic eight ball: will it snow?", "will it snow?"),
        ("magic 8-ball will it snow", "will it snow"),
        ("8 ball. Should I go?", "Should I go?"),
        ("Hey, Magic 8 Ball, am I right?", "am I right?"),
        ("eightball is it true", "is it true"),
        ("Eight ball.", ""),
        ("I think the eight ball is silly", None),
        ("Eighty balls were sold", None),
        ("Will it snow?", None),
        ("", None),
    ],
)
def test_wake_phrase(transcript: str, question: str | None) -> None:
    assert after_wake_phrase(transcript) == question


def test_silence_already_received_counts_towards_the_end_of_an_utterance() -> None:
    audio = np.concatenate([speechlike(1.0), np.zeros(int(0.6 * 48_000), np.float32)])
    stream = MemberStream(SegmenterConfig(silence_seconds=0.8), WebRtcVad())
    sent = packets(audio)[:-5]  # no trailing silence frames: the sender just stops after 0.6 s of quiet
    for index, (seq, ts, frame) in enumerate(sent):
        assert stream.push(seq, ts, frame, now=index * 0.02) == []
    last = (len(sent) - 1) * 0.02
    assert stream.quiet(now=last + 0.05) == []  # inside the jitter window
    (utterance,) = stream.quiet(now=last + 0.4)  # about 0.55 s counted (3 frames held) + 0.4 s ≥ 0.8 s
    assert utterance.reason == "silence"
