"""RIFF/WAVE header repair.

A WAV written to a pipe (ffmpeg does this, and a streamed WAV may too) cannot seek back to fill in its sizes, so the
RIFF and ``data`` sizes hold placeholders (0 or 0xFFFFFFFF). Players and decoders then misjudge the length or call the
tail corrupt. Once the whole file is assembled the true sizes are known; these functions write them.
"""

from __future__ import annotations

import struct
from pathlib import Path

from services.audio_headers import find_data_chunk

HEADER_SCAN_BYTES = 64 * 1024


def fix_sizes(buf: bytearray, total_size: int) -> bool:
    """Rewrite the RIFF and data sizes in ``buf`` (the file's first bytes) for a file of ``total_size`` bytes.

    Returns True if anything changed. Raises ValueError if ``buf`` is not a WAV header.
    """
    data_at = find_data_chunk(buf)
    if data_at is None:
        raise ValueError("not a RIFF/WAVE header with a data chunk")
    riff_size = total_size - 8
    data_size = total_size - (data_at + 8)
    before = bytes(buf[: data_at + 8])
    struct.pack_into("<I", buf, 4, riff_size & 0xFFFFFFFF)
    struct.pack_into("<I", buf, data_at + 4, data_size & 0xFFFFFFFF)
    return bytes(buf[: data_at + 8]) != before


def repair_wav_file(path: Path) -> bool:
    """Fix the sizes of a WAV file in place. Blocking: call it in a thread. Returns True if it changed the file."""
    total = path.stat().st_size
    with path.open("r+b") as fh:
        head = bytearray(fh.read(HEADER_SCAN_BYTES))
        changed = fix_sizes(head, total)
        if changed:
            fh.seek(0)
            fh.write(head)
    return changed


__all__ = ["HEADER_SCAN_BYTES", "fix_sizes", "repair_wav_file"]
