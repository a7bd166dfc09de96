"""One member's received audio: jitter buffer → Opus decoder → voice activity → utterances."""

from __future__ import annotations

import numpy as np

from audio.listen.jitter import Frame, JitterBuffer
from audio.listen.opus import FRAME_SAMPLES, OpusDecoder
from audio.listen.segmenter import Segmenter, SegmenterConfig, Utterance
from audio.listen.vad import VoiceActivity

QUIET_MIN_SECONDS = 0.1  # a sender silent this long has nothing late left to deliver (the jitter window)


class MemberStream:
    """Everything kept for one member being listened to; bounded: the jitter window, a 20 ms carry, and the
    utterance under way (at most `max_seconds`)."""

    def __init__(self, config: SegmenterConfig, vad: VoiceActivity, jitter_depth: int = 3) -> None:
        self.config = config
        self.jitter = JitterBuffer(depth=jitter_depth, max_gap_frames=round(config.silence_seconds / 0.02) + 1)
        self._decoder = OpusDecoder()
        self._vad = vad
        self._segmenter = Segmenter(config)
        self._carry = np.zeros(0, np.int16)
        self.last_packet_at: float | None = None
        self.frames = 0  # 20 ms frames decoded and classified

    @property
    def speaking(self) -> bool:
        """An utterance is under way."""
        return self._segmenter.started

    def push(self, sequence: int, timestamp: int, opus: bytes | None, now: float) -> list[Utterance]:
        """Add one received packet (`opus` None: it could not be opened); returns the utterances it ended."""
        self.last_packet_at = now
        return self._process(self.jitter.push(sequence, timestamp, opus or b""))

    def quiet(self, now: float) -> list[Utterance]:
        """Called now and then: once the member has sent nothing for the rest of the silence time (clients stop
        sending a few frames after they stop talking; the silence already received counts, the wait is never
        shorter than the jitter window), the held packets are played out and the utterance under way ends."""
        if self.last_packet_at is None:
            return []
        wait = max(self.config.silence_seconds - self._segmenter.trailing_silence_seconds, QUIET_MIN_SECONDS)
        if now - self.last_packet_at < wait:
            return []
        ended = self._process(self.jitter.flush())
        self._carry = np.zeros(0, np.int16)
        last = self._segmenter.finish()
        return [*ended, last] if last is not None else ended

    def _process(self, frames: list[Frame]) -> list[Utterance]:
        ended: list[Utterance] = []
        for frame in frames:
            pcm = self._decoder.decode(frame or None)  # b"" (unreadable) and None (missing) are both gaps
            self._carry = np.concatenate([self._carry, pcm])
            while len(self._carry) >= FRAME_SAMPLES:
                chunk, self._carry = self._carry[:FRAME_SAMPLES], self._carry[FRAME_SAMPLES:]
                self.frames += 1
                utterance = self._segmenter.feed(chunk, self._vad.is_speech(chunk))
                if utterance is not None:
                    ended.append(utterance)
        return ended
