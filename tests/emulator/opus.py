"""Opus helpers: frame durations, an Ogg/Opus muxer and decoding to float PCM with ffmpeg."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

import imageio_ffmpeg
import numpy as np

SAMPLE_RATE = 48000
OPUS_SILENCE = b"\xf8\xff\xfe"
OGG_HEADER_PACKETS = (b"OpusHead", b"OpusTags")

# Frame duration in 1/400 s (2.5 ms) per TOC configuration: SILK 0-11, hybrid 12-15, CELT 16-31.
_FRAME_QUARTER_MS = [4, 8, 16, 24] * 3 + [4, 8] * 2 + [1, 2, 4, 8] * 4


def opus_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz carried by one Opus packet (RFC 6716 TOC byte)."""
    toc = packet[0]
    frame = _FRAME_QUARTER_MS[toc >> 3] * SAMPLE_RATE // 400
    code = toc & 0x03
    count = 1 if code == 0 else 2 if code in (1, 2) else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return frame * count


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def _ogg_page(packet: bytes, granule: int, sequence: int, flags: int) -> bytes:
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, 1, sequence, 0, len(lacing)) + lacing
    crc = _ogg_crc(header + packet)
    return header[:22] + struct.pack("<I", crc) + header[26:] + packet


def ogg_opus(packets: Sequence[bytes], channels: int = 2) -> bytes:
    """Mux Opus packets into an Ogg/Opus stream (one packet per page, no pre-skip)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, SAMPLE_RATE, 0, 0)
    vendor = b"discord-emulator"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_ogg_page(head, 0, 0, 0x02), _ogg_page(tags, 0, 1, 0)]
    granule = 0
    for index, packet in enumerate(packets):
        granule += opus_samples(packet)
        last = index == len(packets) - 1
        pages.append(_ogg_page(packet, granule, index + 2, 0x04 if last else 0))
    return b"".join(pages)


async def decode_opus(packets: Sequence[bytes], channels: int = 2) -> np.ndarray:
    """Decode Opus packets with ffmpeg to float32 PCM at 48 kHz, shape (samples, channels)."""
    if not packets:
        return np.zeros((0, channels), dtype=np.float32)
    process = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-hide_banner", "-loglevel", "error", "-f", "ogg", "-i", "pipe:0"),
        *("-f", "f32le", "-ac", str(channels), "-ar", str(SAMPLE_RATE), "pipe:1"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(ogg_opus(packets, channels))
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode the Opus packets: {err.decode(errors='replace')}")
    return np.frombuffer(out, dtype=np.float32).reshape(-1, channels)
