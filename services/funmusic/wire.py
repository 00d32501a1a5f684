"""The Fun-Music wire format: what an event's JSON, the finishing event and an error answer say.

No network and no files here: an event's JSON read without copying its audio (:func:`parse_event_json`), the
finishing event (or non-streaming body) read into a :class:`Final` with its bookkeeping normalised, one event's
base64 decoded strictly (:func:`decode_audio`), and an error answer's body (JSON or an SSE ``event:error`` block).
The reasons are in ``docs/dashscope.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, AnyStr

from services.errors import BrokenStream, ErrorBody
from services.funmusic import b64
from services.funmusic.errors_map import clamp_id, parse_error_body
from services.funmusic.sse import SSEEvent, SSEParser

log = logging.getLogger(__name__)

#: An ``expires_at`` above this is in milliseconds (in seconds it would be after the year 5000).
EXPIRY_MS_ABOVE = 100_000_000_000
#: The Unix seconds an ``expires_at`` may name: 2000-01-01 to 2100-01-01 UTC (the docs say "24 h from now").
EXPIRY_RANGE = (946_684_800, 4_102_444_800)
#: The most billed seconds believed (a day); more is the service's bookkeeping gone wrong.
BILLED_MAX_S = 24 * 3600
RESULT_EVENTS = frozenset({"result", "message"})
_DATA_KEY = '"data":"'
_DATA_KEY_B = b'"data":"'
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.strip() strips, in ASCII


def decoded_size(payload: str) -> int:
    """Bytes that valid base64 decodes to (progress only: the worker decodes, and checks, for real)."""
    return len(payload) // 4 * 3 - (2 if payload.endswith("==") else 1 if payload.endswith("=") else 0)


def decode_audio(payload: str | bytes | memoryview, request_id: str | None, audio_delivered: bool) -> bytes:
    """One event's base64, decoded on its own: joined padded chunks would silently lose data (``YWI=Y2Q=``)."""
    try:  # pybase64 where installed, else binascii: equally strict (see b64.py)
        return b64.decode(payload)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise BrokenStream(
            f"invalid base64 in an audio event: {exc}", request_id=request_id, audio_delivered=audio_delivered
        ) from None


@dataclass
class Final:
    """What the finishing event (or the non-streaming body) says about the song."""

    request_id: str | None
    url: str | None
    expires_at: int | None
    lyrics: str
    sample_rate: int | None
    channels: int | None
    billed_seconds: int | None
    audio_id: str | None


def _as_int(value: object) -> int | None:
    """``48000``, ``"48000"`` and ``200.0`` are all integers here (the docs and examples disagree on types);
    ``1e999``, ``Infinity`` and ``NaN`` (which JSON parsing lets through) are not numbers at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        return round(value) if math.isfinite(value) else None
    return None


def _clip_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}… ({len(text)} characters)"


def _expiry(value: object) -> int | None:
    """``audio.expires_at`` as Unix seconds: milliseconds are converted, and a value that is no time this
    century (not a number, infinite, negative) is dropped, each with a WARNING. Only bookkeeping: never fatal."""
    if value is None:
        return None
    seconds = _as_int(value)
    if seconds is not None and seconds > EXPIRY_MS_ABOVE:
        log.warning("DashScope's expires_at %s looks like milliseconds; reading it as such", _clip_repr(value))
        seconds //= 1000
    if seconds is None or not EXPIRY_RANGE[0] <= seconds <= EXPIRY_RANGE[1]:
        log.warning("DashScope sent an unusable expires_at %s; the url's expiry is not kept", _clip_repr(value))
        return None
    return seconds


def _billed(value: object) -> int | None:
    """``usage.duration`` (billed seconds), if it is a plausible number of seconds; otherwise None, with a
    WARNING (the song's measured length stands in for it)."""
    if value is None:
        return None
    seconds = _as_int(value)
    if seconds is None or not 0 <= seconds <= BILLED_MAX_S:
        log.warning("DashScope sent an unusable usage.duration %s; ignoring it", _clip_repr(value))
        return None
    return seconds


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def final_from(obj: Mapping[str, Any], request_id: str | None) -> Final:
    output = as_dict(obj.get("output"))
    audio = as_dict(output.get("audio"))
    extra = as_dict(output.get("extra_info"))
    usage = as_dict(obj.get("usage"))
    url = audio.get("url")
    lyrics = extra.get("lyrics")
    audio_id = audio.get("id")
    return Final(
        request_id=clamp_id(obj.get("request_id"), "request_id") or request_id,
        url=url if isinstance(url, str) and url else None,
        expires_at=_expiry(audio.get("expires_at")),
        lyrics=lyrics if isinstance(lyrics, str) else "",
        sample_rate=_as_int(extra.get("sample_rate")),
        channels=_as_int(extra.get("channels")),
        billed_seconds=_billed(usage.get("duration")),
        audio_id=clamp_id(audio_id, "audio id") if isinstance(audio_id, str) else None,
    )


def _json_int(digits: str) -> int | float:
    """An integer literal; one too long for ``int()`` (over 4,300 digits raises) becomes a float, i.e. infinite,
    which the bookkeeping readers drop, rather than making the whole event unreadable."""
    return int(digits) if len(digits) <= 100 else float(digits)


_JSON = json.JSONDecoder(parse_int=_json_int)  # made once: json.loads(..., parse_int=) makes one per call


def json_loads(text: str | bytes) -> Any:
    if isinstance(text, str):
        return _JSON.decode(text)
    return json.loads(text, parse_int=_json_int)


def _audio_span(text: AnyStr, key: AnyStr, quote: AnyStr, escape: AnyStr, name: AnyStr) -> tuple[int, int] | None:
    """Where the value of ``text``'s one ``"data":"`` is, if it holds no escapes and no other ``"data"`` is there."""
    at = text.find(key)
    start = at + len(key)
    end = text.find(quote, start) if at > 0 and text[at - 1 : at] != escape else -1
    if end < 0 or text.find(escape, start, end) >= 0 or text.find(name, 0, at) >= 0 or name in text[end:]:
        return None
    return start, end


def parse_event_json(text: str | bytes) -> Any:
    """``json.loads(text)`` for an event, without copying its audio a character at a time.

    ``json.loads`` builds each string by scanning it character by character; for the audio (nearly all of an
    event) that costs more than decoding the base64. So when the event has exactly one ``"data"`` key,
    written ``"data":"`` and holding no escapes, the value is cut out, the small rest is parsed, and the value
    is put back if the parse says it was ``output.audio.data`` (now ``""``): the object ``json.loads`` returns.
    (One difference: a raw control character in the value, which ``json.loads`` refuses, is left for the
    base64 decoder to refuse.) Anything else is parsed whole.

    Given bytes (an event's data as received, :attr:`SSEEvent.raw`), the text is read as UTF-8 (an invalid byte
    as U+FFFD, as :attr:`SSEEvent.data` reads it), except the cut-out value: that is put back as a memoryview of
    ``text``, the base64's bytes, neither copied nor decoded to a str.
    """
    if isinstance(text, str):
        span = _audio_span(text, _DATA_KEY, '"', "\\", '"data"')
        if span is not None:
            start, end = span
            obj = _with_audio(json_loads(text[:start] + text[end:]), text[start:end])
            if obj is not None:
                return obj
        return json_loads(text)
    span = _audio_span(text, _DATA_KEY_B, b'"', b"\\", b'"data"')
    if span is not None:
        start, end = span
        obj = _with_audio(_parse_rest(text[:start] + text[end:]), memoryview(text)[start:end])
        if obj is not None:
            return obj
    return json_loads(str(text, "utf-8", "replace"))


@functools.lru_cache(maxsize=64)
def _parse_rest(rest: bytes) -> Any:
    """An event without its audio, parsed. A stream's audio events all have the same rest (ids, expiry, "null"),
    so it is parsed once per stream; what this returns is shared, and :func:`_with_audio` never changes it."""
    return json_loads(str(rest, "utf-8", "replace"))


def _with_audio(obj: Any, value: str | memoryview) -> Any:
    """A copy of ``obj`` with ``value`` as its ``output.audio.data``, if the cut left that ``""``; else None.

    Only the dicts on that path are new; the rest is ``obj``'s (the client reads events, it never changes them)."""
    output = as_dict(obj).get("output")
    if not isinstance(output, dict):
        return None
    audio = output.get("audio")
    if not isinstance(audio, dict) or audio.get("data") != "":
        return None
    return {**obj, "output": {**output, "audio": {**audio, "data": value}}}


def is_blank(event: SSEEvent) -> bool:
    """``not event.data.strip()``, without decoding the data to a str when its first byte is ASCII and no space."""
    head = event.raw[:1]
    if head and head[0] < 0x80 and head.strip(_ASCII_SPACE):
        return False
    return not event.data.strip()


def is_stop(output: Mapping[str, Any]) -> bool:
    """``"null"``, ``""``, JSON null and a missing field all mean "not finished" (``docs/dashscope.md`` §2)."""
    reason = output.get("finish_reason")
    return isinstance(reason, str) and reason.strip().lower() == "stop"


def error_body(raw: bytes, status: int, *, is_sse: bool) -> ErrorBody:
    """An HTTP error's body: JSON, or (as DashScope sometimes sends) an SSE ``event:error`` block."""
    if is_sse:
        parser = SSEParser()
        for event in parser.feed(raw) + parser.close():
            if event.data.strip():
                return parse_error_body(event.data, event.http_status or status)
    return parse_error_body(raw, status)
