"""One sender's packets back in order: reordering within a small window, lost packets and timestamp gaps."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz, what Discord clients send
Frame = bytes | None  # an Opus frame, or None for 20 ms where nothing was received (lost or not sent)


@dataclass
class JitterStats:
    """What the buffer did with the packets it was given."""

    received: int = 0
    late: int = 0  # arrived after their place was played out
    duplicates: int = 0
    missing_frames: int = 0  # 20 ms frames filled in for lost packets and timestamp gaps


class JitterBuffer:
    """Holds up to `depth` packets to put reordered ones back in place, then releases frames in order.

    Gaps are measured in RTP time, so lost packets and a sender's pauses (clients stop sending in silence) both
    come out as `None` frames, at most `max_gap_frames` per gap. At most `depth + 1` packets are ever held.
    """

    def __init__(self, depth: int = 3, max_gap_frames: int = 50) -> None:
        self.depth = depth
        self.max_gap_frames = max_gap_frames
        self.stats = JitterStats()
        self._held: dict[int, tuple[int, bytes]] = {}  # extended sequence → (timestamp, payload)
        self._next: int | None = None  # extended sequence of the next frame to release
        self._last_timestamp: int | None = None

    def __len__(self) -> int:
        return len(self._held)

    def _extend(self, sequence: int) -> int:
        """The 16-bit sequence number unwrapped next to the one expected."""
        if self._next is None:
            return sequence
        delta = (sequence - self._next) % 65536
        return self._next + (delta - 65536 if delta >= 32768 else delta)

    def push(self, sequence: int, timestamp: int, payload: bytes) -> list[Frame]:
        """Add a packet; returns the frames that are now due, in order."""
        self.stats.received += 1
        extended = self._extend(sequence)
        if self._next is not None and extended < self._next:
            self.stats.late += 1
            return []
        if extended in self._held:
            self.stats.duplicates += 1
            return []
        self._held[extended] = (timestamp, payload)
        if self._next is None:
            self._next = extended
        return self._release(force=False)

    def flush(self) -> list[Frame]:
        """Release everything held (the sender went quiet: nothing else will fill the holes)."""
        return self._release(force=True)

    def _release(self, force: bool) -> list[Frame]:
        frames: list[Frame] = []
        while self._held:
            assert self._next is not None
            if self._next not in self._held:
                if not force and len(self._held) <= self.depth:
                    break
                self._next = min(self._held)  # the missing ones are lost: the timestamp gap accounts for them
            timestamp, payload = self._held.pop(self._next)
            frames.extend(self._gap(timestamp))
            frames.append(payload)
            self._last_timestamp = timestamp
            self._next += 1
        return frames

    def _gap(self, timestamp: int) -> list[Frame]:
        """`None` frames for the RTP time between the previous released frame and this one (capped)."""
        if self._last_timestamp is None:
            return []
        step = (timestamp - self._last_timestamp) % 2**32
        missing = min(max(step // SAMPLES_PER_FRAME - 1, 0), self.max_gap_frames) if step < 2**31 else 0
        self.stats.missing_frames += missing
        return [None] * missing
