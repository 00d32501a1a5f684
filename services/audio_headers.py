"""Reading audio headers: RIFF/WAVE chunks, MPEG audio frame headers, ID3v2 tags.

The one place that walks these structures; what it returns is plain numbers (offsets, rates), and nothing here
does I/O. Its readers: :mod:`services.wav` (size repair), :mod:`services.audio` (tagging, PCM reading) and the
Fun-Music client's progress meter (:mod:`services.funmusic.sink`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_MP3_BITRATES_KBPS = {
    # (MPEG-1?, layer) -> bitrate table indexed by the header's 4-bit index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


# ------------------------------------------------------------------------------------------------ RIFF/WAVE


def is_wav(head: bytes | bytearray) -> bool:
    """Whether ``head`` starts like a RIFF/WAVE file."""
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def riff_chunks(head: bytes | bytearray) -> Iterator[tuple[bytes, int, int]]:
    """``(chunk id, offset of the id, declared size)`` of each chunk whose 8-byte header is within ``head``, in
    order, for a RIFF/WAVE header; nothing for anything else. A size may be a placeholder (0 or 0xFFFFFFFF)."""
    if not is_wav(head):
        return
    pos = 12
    while pos + 8 <= len(head):
        (size,) = struct.unpack_from("<I", head, pos + 4)
        yield bytes(head[pos : pos + 4]), pos, size
        pos += 8 + size + (size & 1)


def find_data_chunk(header: bytes | bytearray) -> int | None:
    """Offset of the ``data`` chunk's id in a RIFF/WAVE header, or None if this is not a WAV header."""
    for chunk_id, pos, _ in riff_chunks(header):
        if chunk_id == b"data":
            return pos
    return None


class WavFormat(NamedTuple):
    """A WAV's ``fmt`` chunk: the format tag as written (see :func:`wav_format` for the extensible one)."""

    tag: int
    channels: int
    rate: int
    bits: int
    at: int  # offset of the chunk's id


def wav_format(head: bytes | bytearray, *, resolve_extensible: bool = False) -> WavFormat | None:
    """The first ``fmt`` chunk whose 16 bytes are within ``head``, or None. With ``resolve_extensible``,
    WAVE_FORMAT_EXTENSIBLE's tag is replaced by its sub-format's (when the chunk holds one)."""
    for chunk_id, pos, size in riff_chunks(head):
        if chunk_id == b"fmt " and pos + 8 + 16 <= len(head):
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            if resolve_extensible and tag == WAVE_FORMAT_EXTENSIBLE and size >= 40 and pos + 8 + 26 <= len(head):
                (tag,) = struct.unpack_from("<H", head, pos + 8 + 24)
            return WavFormat(tag, channels, rate, bits, pos)
    return None


def wav_byte_rate(head: bytes | bytearray) -> tuple[int, int] | None:
    """(bytes of audio per second, bytes before the samples) from a WAV header, or None."""
    data_at = find_data_chunk(head)
    if data_at is None:
        return None
    fmt = wav_format(head)
    if fmt is None or fmt.at > data_at:
        return None
    per_second = fmt.rate * fmt.channels * max(1, fmt.bits // 8 or 2)
    return (per_second, data_at + 8) if per_second > 0 else None


# ------------------------------------------------------------------------------------------------ ID3v2, MP3


def id3v2_size(head: bytes | bytearray) -> int | None:
    """Bytes taken by the ID3v2 tag (header, body and any footer) that ``head`` starts with, or None when it
    starts with none (or with a size that is not syncsafe, so not a tag)."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return None
    length = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + length + (10 if head[5] & 0x10 else 0)


def mp3_bitrate(head: bytes | bytearray) -> int | None:
    """Bits per second of the first MPEG audio frame in ``head`` (after any ID3v2 tag), or None."""
    pos = id3v2_size(head) or 0
    while True:
        pos = head.find(b"\xff", pos)
        if pos < 0 or pos + 4 > len(head):
            return None
        b1, b2 = head[pos + 1], head[pos + 2]
        version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
        index, rate_index = b2 >> 4, (b2 >> 2) & 3
        if (b1 & 0xE0) == 0xE0 and version != 1 and layer_bits != 0 and index not in (0, 15) and rate_index != 3:
            return _MP3_BITRATES_KBPS[(version == 3, 4 - layer_bits)][index] * 1000
        pos += 1
