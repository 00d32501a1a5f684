"""Strict base64 decoding of the audio: pybase64 where its wheel is installed, else the standard library's.

Both refuse the same inputs (``docs/dashscope.md`` section 6.2): a character outside the standard alphabet
(whitespace, ``-``, ``_``, anything non-ASCII), a length that is not whole 4-character quanta, padding anywhere but
at the end, and padding beyond what the last quantum needs (``YWJj====``, which ``binascii`` alone lets through,
so the fallback checks the length too). Both raise :class:`binascii.Error` (a ``ValueError``), or ``ValueError``
for a non-ASCII str.

Why pybase64: CPython's ``binascii`` decodes about 0.3 GB/s, a fifth of a second of the event loop for a 200 s
WAV; pybase64 (SIMD) decodes the same input 20-40 times faster (``docs/performance.md``).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable

Decoder = Callable[[str | bytes | memoryview], bytes]


def decode_fallback(data: str | bytes | memoryview) -> bytes:
    """``binascii.a2b_base64(strict_mode=True)`` plus the one rule it lacks: no padding past the last quantum."""
    out = binascii.a2b_base64(data, strict_mode=True)
    if len(data) != (len(out) + 2) // 3 * 4:
        raise binascii.Error("Excess data after padding")
    return out


def _load_fast() -> Decoder | None:
    try:
        import pybase64
    except ImportError:
        return None
    if "C extension active" not in pybase64.get_version():  # its pure-Python stand-in is binascii, less strict
        return None

    def decode_fast(data: str | bytes | memoryview) -> bytes:
        """pybase64 (SIMD where the CPU has it), as strict as :func:`decode_fallback`."""
        out: bytes = pybase64.b64decode(data, validate=True)
        return out

    return decode_fast


#: pybase64's decoder, or None where its wheel is missing
decode_fast: Decoder | None = _load_fast()
#: the strict decoder in use: pybase64's when it is installed
decode: Decoder = decode_fast or decode_fallback

__all__ = ["decode", "decode_fallback", "decode_fast"]
