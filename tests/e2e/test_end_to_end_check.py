"""The e2e scenarios' DAVE check fails on what a listener could not hear end-to-end encrypted."""

from __future__ import annotations

import pytest

from tests.e2e.harness import assert_heard_end_to_end
from tests.emulator import RtpPacket
from tests.emulator.dave import E2E, PASSTHROUGH, PLAIN, UNDECRYPTABLE
from tests.emulator.opus import OPUS_SILENCE


def packet(e2e: str, secured: bool = True, payload: bytes = b"\xfc\x01\x02") -> RtpPacket:
    return RtpPacket(1, 0, 1, 0.0, payload, payload + b"\xfa\xfa", e2e, secured)


def test_frames_before_the_first_transition_and_silence_do_not_count() -> None:
    unsecured = [packet(PLAIN, secured=False)] * 5
    silence = [packet(PASSTHROUGH, payload=OPUS_SILENCE)] * 5
    assert_heard_end_to_end(unsecured + [packet(E2E)] * 99 + [packet(UNDECRYPTABLE)] + silence)


@pytest.mark.parametrize("failure", [PASSTHROUGH, UNDECRYPTABLE, PLAIN])
def test_more_than_one_frame_in_a_hundred_not_decrypted_fails(failure: str) -> None:
    with pytest.raises(AssertionError):
        assert_heard_end_to_end([packet(E2E)] * 98 + [packet(failure)] * 2)


def test_a_call_that_never_secured_fails() -> None:
    with pytest.raises(AssertionError, match="no audio frame was sent after a transition"):
        assert_heard_end_to_end([packet(PLAIN, secured=False)] * 10)
