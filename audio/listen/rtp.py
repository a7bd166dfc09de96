"""RTP packets as Discord voice sends them: header parsing, transport decryption, DAVE frame opening."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
SUPPORTED_MODES = (XCHACHA,)  # what discord.py 2.7.1 negotiates; AES-GCM would need its own branch
RTCP_TYPES = range(200, 205)  # sender/receiver reports and the rest of RTCP share the socket
DAVE_MARKER = b"\xfa\xfa"  # the last two bytes of every DAVE-encrypted frame
MIN_PACKET = 12 + 16 + 4  # header, AEAD tag, nonce counter


class PacketError(Exception):
    """A datagram that is not a usable RTP audio packet."""


@dataclass(frozen=True)
class RtpHeader:
    """The fields of an RTP header the receiver uses, and where the (encrypted) payload starts."""

    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    extension: bool
    header_length: int  # bytes sent in clear: fixed header, CSRCs and the extension's 4-byte preamble


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram is RTCP (reports) rather than RTP audio."""
    return len(data) >= 2 and data[1] in RTCP_TYPES


def parse_header(data: bytes) -> RtpHeader:
    """Parse the RTP header of `data`; raises `PacketError` for anything that is not RTP version 2."""
    if len(data) < MIN_PACKET or data[0] >> 6 != 2:
        raise PacketError("not an RTP packet")
    sequence, timestamp, ssrc = struct.unpack_from(">HII", data, 2)
    extension = bool(data[0] & 0x10)
    length = 12 + 4 * (data[0] & 0x0F) + (4 if extension else 0)
    if len(data) < length + 16 + 4:
        raise PacketError("truncated RTP packet")
    return RtpHeader(sequence, timestamp, ssrc, data[1] & 0x7F, extension, length)


def peek_ssrc(data: bytes) -> int | None:
    """The SSRC of an RTP datagram without parsing the rest (None for RTCP and runts): cheap enough for the
    socket thread, so packets of members nobody listens to are dropped before any decryption."""
    if len(data) < MIN_PACKET or is_rtcp(data):
        return None
    return struct.unpack_from(">I", data, 8)[0]


def decrypt_transport(data: bytes, header: RtpHeader, mode: str, key: bytes) -> bytes:
    """The payload of an ``*_rtpsize`` packet: the clear header is the associated data, the last 4 bytes the
    nonce's start; a header extension's body travels encrypted at the start of the payload and is cut off."""
    if mode != XCHACHA:
        raise PacketError(f"unsupported voice encryption mode {mode}")
    aad, ciphertext, counter = data[: header.header_length], data[header.header_length : -4], data[-4:]
    try:
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, counter + bytes(20), key)
    except nacl.exceptions.CryptoError as exc:
        raise PacketError("transport decryption failed") from exc
    if header.extension:
        words = struct.unpack_from(">H", data, header.header_length - 2)[0]
        plain = plain[4 * words :]
    return plain


@dataclass(frozen=True)
class Dave:
    """A connection's DAVE session as the receiver uses it (no davey types here)."""

    decrypt: Callable[[int, bytes], bytes]  # (sender user id, frame) → Opus; raises when it can't
    can_passthrough: Callable[[int], bool]  # whether unencrypted frames of this sender are allowed now


def open_frame(frame: bytes, user_id: int, dave: Dave | None) -> bytes | None:
    """The Opus frame inside a (possibly DAVE-encrypted) payload, or None when it can't be read (yet).

    With no DAVE session the payload is the Opus frame. With one, frames are decrypted with the sender's key;
    what receivers meet on real Discord is tolerated: an unencrypted frame is used as it is while the session
    allows passthrough for that sender (around transitions), and a frame that fails (no key yet for a new sender's
    first ~100 ms) is dropped. An unencrypted frame outside passthrough is dropped too: it could only have been
    injected on the way, not sent by the member.
    """
    if dave is None:
        return frame
    try:
        return dave.decrypt(user_id, frame)
    except Exception:  # davey raises plain exceptions for a missing cryptor or a bad tag
        return frame if not frame.endswith(DAVE_MARKER) and dave.can_passthrough(user_id) else None
