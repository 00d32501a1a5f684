"""The Fun-Music HTTP client: one call in, one finished audio file out.

``generate`` validates the request (no network before that), then POSTs to DashScope, streaming (SSE) when the input
fits the streaming limits and not otherwise, and ends with a file in ``out_dir`` that has been decoded by ffmpeg to
measure it. What it guards against, with the reasons in ``docs/dashscope.md``:

- aiohttp's line reader dies on long lines, so the body is read with ``iter_any()`` into our own SSE parser;
- each event's base64 is decoded on its own (strictly): joining padded chunks silently drops data; an event cut
  mid-quantum carries its last 1-3 characters into the next one;
- a line (or an event) larger than ``max_event_bytes`` fails the stream at once, rather than filling memory;
- bookkeeping fields (``expires_at``, ``usage.duration``, ids) that make no sense are normalised or dropped with a
  WARNING: they never fail a song that was paid for;
- a stream that closes without ``finish_reason: "stop"`` is an error, never a short song;
- a streamed WAV carries placeholder sizes (and maybe repeated headers): dropped and repaired;
- the audio is proven to decode, and measured, by ffmpeg decoding all of it, never by trusting a header; it is
  fed to ffmpeg through a pipe while it arrives, so when the stream ends only the tail is left to check;
- a song longer than ``max_song_seconds`` (by that measure) is refused before anything decodes it into memory;
- errors are classified by ``code`` (see ``errors_map``), never by HTTP 200;
- retryable failures are retried whole with exponential backoff and full jitter; paid-for-nothing cases
  (auth, moderation, parameters) never are;
- every request has a connect timeout and an idle read timeout, and the whole call has a deadline;
- the non-streaming download only goes to DashScope's OSS hosts (or ones the operator allowed), with a size cap,
  and redirects are followed by hand so they cannot lead elsewhere.

The audio never sits whole in memory: decoded chunks go straight to the file and to that ffmpeg, from a worker
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import re
import struct
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, AnyStr

import aiohttp
from yarl import URL

from services.errors import (
    BrokenStream,
    ConfigError,
    ConnectionFailed,
    DownloadError,
    ErrorBody,
    ServiceError,
    ServiceTimeout,
    SongbotError,
    SongTooLong,
)
from services.ffmpeg import AudioInfo, DecodeCheck, FfmpegError, write_all
from services.funmusic import b64
from services.funmusic.errors_map import body_from_json, clamp_id, classify, parse_error_body, parse_retry_after
from services.funmusic.limiter import RateLimiter
from services.funmusic.request import (
    GenerationRequest,
    GenerationResult,
    Mode,
    Progress,
    ProgressCallback,
    ProgressStage,
)
from services.funmusic.sse import EventTooLarge, SSEEvent, SSEParser
from services.settings import Secret, Settings
from services.wav import find_data_chunk, repair_wav_file

log = logging.getLogger(__name__)

GENERATION_PATH = "/services/audio/music/generation"
OSS_HOST_SUFFIX = ".aliyuncs.com"
ERROR_BODY_MAX = 1024 * 1024
JSON_BODY_MAX = 64 * 1024 * 1024
#: One SSE event (or a line still waiting for its end) may be as large as a whole non-streaming answer, no larger.
MAX_EVENT_BYTES = JSON_BODY_MAX
#: An ``expires_at`` above this is in milliseconds (in seconds it would be after the year 5000).
EXPIRY_MS_ABOVE = 100_000_000_000
#: The Unix seconds an ``expires_at`` may name: 2000-01-01 to 2100-01-01 UTC (the docs say "24 h from now").
EXPIRY_RANGE = (946_684_800, 4_102_444_800)
#: The most billed seconds believed (a day); more is the service's bookkeeping gone wrong.
BILLED_MAX_S = 24 * 3600
#: Songs longer than this are refused before anything decodes them into memory (``SONGBOT_MAX_SONG_SECONDS``).
MAX_SONG_SECONDS = 900.0
DOWNLOAD_CHUNK = 256 * 1024
#: aiohttp's default 64 KiB read buffer pauses the socket every 128 KiB; audio streams flow better with room, but
#: what aiohttp buffers (up to twice this) is read, joined and parsed at once, so more only costs memory: with 1 MiB
#: a song's peak was 10 MB instead of 5 (bench/stream.py), at the same speed.
READ_BUFSIZE = 256 * 1024
MAX_REDIRECTS = 3
HEAD_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RESULT_EVENTS = frozenset({"result", "message"})
_DATA_KEY = '"data":"'
_DATA_KEY_B = b'"data":"'
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.strip() strips, in ASCII
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------------------------------- audio files


_MP3_BITRATES_KBPS = {
    # (MPEG-1?, layer) -> bitrate table indexed by the header's 4-bit index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def mp3_bitrate(head: bytes | bytearray) -> int | None:
    """Bits per second of the first MPEG audio frame in ``head`` (after any ID3v2 tag), or None."""
    pos = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        pos = 10 + size + (10 if head[5] & 0x10 else 0)
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


def wav_byte_rate(head: bytes | bytearray) -> tuple[int, int] | None:
    """(bytes of audio per second, bytes before the samples) from a WAV header, or None."""
    data_at = find_data_chunk(head)
    if data_at is None:
        return None
    pos = 12
    while pos + 8 <= data_at:
        chunk_id = bytes(head[pos : pos + 4])
        (size,) = struct.unpack_from("<I", head, pos + 4)
        if chunk_id == b"fmt " and pos + 24 <= len(head):
            _, channels, rate = struct.unpack_from("<HHI", head, pos + 8)
            (bits,) = struct.unpack_from("<H", head, pos + 22)
            per_second = rate * channels * max(1, bits // 8 or 2)
            return (per_second, data_at + 8) if per_second > 0 else None
        pos += 8 + size + (size & 1)
    return None


def _decoded_size(payload: str) -> int:
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


class _Meter:
    """Counts audio bytes and estimates their seconds from the first bytes: WAV byte rate, else MP3 bitrate."""

    def __init__(self) -> None:
        self.count = 0
        self.head = bytearray()
        self._rate: tuple[int, int] | None = None

    def add(self, data: bytes) -> None:
        self.count += len(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]

    def seconds(self) -> float:
        if self._rate is None and self.head:
            if self.head[:4] == b"RIFF":
                self._rate = wav_byte_rate(self.head)
            else:
                bitrate = mp3_bitrate(self.head)
                self._rate = (bitrate // 8, 0) if bitrate else None
        if self._rate is None:
            return 0.0
        per_second, offset = self._rate
        return max(0, self.count - offset) / per_second


class _AudioSink:
    """The output file being assembled, and the decode check that follows it.

    Methods marked *blocking* do file I/O: call them in a worker thread. The async ones run on the loop, and only
    while no blocking method is running.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.meter = _Meter()
        self.dropped_headers = 0
        self._fh: IO[bytes] | None = None
        self._check: DecodeCheck | None = None

    async def start(self) -> None:
        """Start (or start over) with an empty file."""
        await self.stop_check()
        await asyncio.to_thread(self.reset)

    async def begin_check(self, head: bytes) -> None:
        """Start the ffmpeg that decodes what is written from now on: audio that begins with ``head``."""
        assert self._check is None, "one check per start()"
        self._check = await DecodeCheck.start(head)

    async def measure(self) -> AudioInfo:
        """Everything is written: what decoding it says. Raises :class:`FfmpegError` if it does not decode."""
        check, self._check = self._check, None
        if check is None:
            raise FfmpegError("not decodable audio: there is none")
        return await check.finish()

    def kill_check(self) -> None:
        """Stop ffmpeg at once (a write blocked on it returns); :meth:`stop_check` still has to follow."""
        if self._check is not None:
            self._check.kill()

    async def stop_check(self) -> None:
        check, self._check = self._check, None
        if check is not None:
            await check.abort()

    async def dispose(self) -> None:
        """Stop the check, close and delete the file: no partial file is left behind."""
        await self.stop_check()
        await asyncio.to_thread(self.discard)

    @property
    def bytes_written(self) -> int:
        return self.meter.count

    @property
    def head(self) -> bytearray:
        return self.meter.head

    def reset(self) -> None:
        """*Blocking.* Start (or start over) with an empty file."""
        if self._fh is None:
            self._fh = self.path.open("wb", buffering=0)
        else:
            self._fh.seek(0)
            self._fh.truncate()
        self.meter = _Meter()
        self.dropped_headers = 0

    def write_stream_payloads(self, payloads: Sequence[str | bytes], request_id: str | None) -> None:
        """*Blocking.* Append events' audio: base64 (a str) is decoded here, each event on its own; bytes are
        already decoded. Repeated WAV headers are dropped."""
        self.write_chunks(
            [p if isinstance(p, bytes) else decode_audio(p, request_id, self.bytes_written > 0) for p in payloads]
        )

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """*Blocking.* Append decoded event chunks, dropping a WAV header that repeats at a chunk's start.

        One ``writev`` per batch: after each syscall this thread has to win the GIL back from the busy event
        loop, so fewer, larger writes keep the two threads from queueing behind each other.
        """
        kept: list[bytes] = []
        for data in chunks:
            if self.fmt == "wav" and (self.meter.count or kept) and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
                data_at = find_data_chunk(data)
                if data_at is not None:
                    data = data[data_at + 8 :]
                    self.dropped_headers += 1
            if data:
                kept.append(data)
        if kept:
            assert self._fh is not None, "reset() first"
            self._write(kept)
            for data in kept:
                self.meter.add(data)

    def write_raw(self, data: bytes) -> None:
        """*Blocking.* Append bytes exactly as they are (a downloaded file)."""
        if data:
            assert self._fh is not None, "reset() first"
            self._write([data])
            self.meter.add(data)

    def _write(self, chunks: Sequence[bytes]) -> None:
        """*Blocking.* To ffmpeg first, so that it decodes while the file is written."""
        assert self._fh is not None
        if self._check is not None:
            self._check.feed(chunks)
        write_all(self._fh.fileno(), chunks)

    def close(self) -> None:
        """*Blocking.*"""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """*Blocking.* Close and delete: no partial file is left behind."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def seconds(self) -> float:
        """Seconds of audio written so far (an estimate; see :class:`_Meter`)."""
        return self.meter.seconds()


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class _Final:
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


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _final_from(obj: Mapping[str, Any], request_id: str | None) -> _Final:
    output = _as_dict(obj.get("output"))
    audio = _as_dict(output.get("audio"))
    extra = _as_dict(output.get("extra_info"))
    usage = _as_dict(obj.get("usage"))
    url = audio.get("url")
    lyrics = extra.get("lyrics")
    audio_id = audio.get("id")
    return _Final(
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


def _json_loads(text: str | bytes) -> Any:
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
            obj = _with_audio(_json_loads(text[:start] + text[end:]), text[start:end])
            if obj is not None:
                return obj
        return _json_loads(text)
    span = _audio_span(text, _DATA_KEY_B, b'"', b"\\", b'"data"')
    if span is not None:
        start, end = span
        obj = _with_audio(_parse_rest(text[:start] + text[end:]), memoryview(text)[start:end])
        if obj is not None:
            return obj
    return _json_loads(str(text, "utf-8", "replace"))


@functools.lru_cache(maxsize=64)
def _parse_rest(rest: bytes) -> Any:
    """An event without its audio, parsed. A stream's audio events all have the same rest (ids, expiry, "null"),
    so it is parsed once per stream; what this returns is shared, and :func:`_with_audio` never changes it."""
    return _json_loads(str(rest, "utf-8", "replace"))


def _with_audio(obj: Any, value: str | memoryview) -> Any:
    """A copy of ``obj`` with ``value`` as its ``output.audio.data``, if the cut left that ``""``; else None.

    Only the dicts on that path are new; the rest is ``obj``'s (the client reads events, it never changes them)."""
    output = _as_dict(obj).get("output")
    if not isinstance(output, dict):
        return None
    audio = output.get("audio")
    if not isinstance(audio, dict) or audio.get("data") != "":
        return None
    return {**obj, "output": {**output, "audio": {**audio, "data": value}}}


def _blank(event: SSEEvent) -> bool:
    """``not event.data.strip()``, without decoding the data to a str when its first byte is ASCII and no space."""
    head = event.raw[:1]
    if head and head[0] < 0x80 and head.strip(_ASCII_SPACE):
        return False
    return not event.data.strip()


def _is_stop(output: Mapping[str, Any]) -> bool:
    """``"null"``, ``""``, JSON null and a missing field all mean "not finished" (``docs/dashscope.md`` §2)."""
    reason = output.get("finish_reason")
    return isinstance(reason, str) and reason.strip().lower() == "stop"


def _final_path(tmp: Path, out_dir: Path, request_id: str | None, fmt: str) -> Path:
    """*Blocking.* Give the finished temp file its name: the request id when it is a safe file name."""
    stem = request_id if request_id and _SAFE_NAME.match(request_id) else uuid.uuid4().hex
    target = out_dir / f"{stem}.{fmt}"
    if target.exists():
        target = out_dir / f"{stem}-{uuid.uuid4().hex[:8]}.{fmt}"
    tmp.rename(target)
    return target


class _Reporter:
    """Sends progress to the caller's callback; a failing callback is logged, never fatal to the song."""

    def __init__(self, callback: ProgressCallback | None, tag: str) -> None:
        self._callback = callback
        self._tag = tag
        self.attempt = 1

    async def __call__(self, stage: ProgressStage, bytes_received: int = 0, seconds_received: float = 0.0) -> None:
        if self._callback is None:
            return
        try:
            await self._callback(
                Progress(
                    stage=stage,
                    bytes_received=bytes_received,
                    seconds_received=seconds_received,
                    attempt=self.attempt,
                )
            )
        except SongbotError:
            raise
        except Exception:
            log.exception("fun-music %s: progress callback failed (ignored)", self._tag)


# ------------------------------------------------------------------------------------------------------- client


class FunMusicClient:
    """Talks to DashScope's music generation endpoint. One instance per process, sharing one ClientSession."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: Secret,
        base_url: str,
        max_retries: int = 3,
        connect_timeout_s: float = 10,
        idle_timeout_s: float = 60,
        total_deadline_s: float = 600,
        download_max_bytes: int = 200 * 1024 * 1024,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_song_seconds: float = MAX_SONG_SECONDS,
        extra_download_hosts: Sequence[str] = (),
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        if not api_key:
            raise ConfigError("DASHSCOPE_API_KEY is empty: put your DashScope API key in .env.")
        base = URL(base_url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"DASHSCOPE_BASE_URL must be a full http(s) URL; got {base_url!r}.")
        self._session = session
        self._api_key = api_key
        self.base_url = str(base)
        self.endpoint = f"{self.base_url}{GENERATION_PATH}"
        self.max_retries = max(0, max_retries)
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.total_deadline_s = total_deadline_s
        self.download_max_bytes = download_max_bytes
        self.max_event_bytes = max_event_bytes
        self.max_song_seconds = max_song_seconds
        self.allowed_hosts = frozenset({base.host.lower(), *(h.lower() for h in extra_download_hosts)})
        self._limiter = limiter
        self._sleep = sleep
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=idle_timeout_s)
        #: Called with the code of every error DashScope answers, retried or not (the bot counts them in metrics).
        self.on_service_error: Callable[[str | None], None] | None = None

    @classmethod
    def from_settings(
        cls,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        base_url: str | None = None,
        api_key: Secret | None = None,
    ) -> FunMusicClient:
        """The client the settings describe (``base_url``/``api_key`` override them, e.g. for the simulator)."""
        return cls(
            session,
            api_key=api_key if api_key is not None else settings.dashscope_api_key,
            base_url=base_url or settings.dashscope_base_url,
            max_retries=settings.max_retries,
            connect_timeout_s=settings.connect_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            total_deadline_s=settings.total_deadline_s,
            download_max_bytes=settings.download_max_bytes,
            max_song_seconds=settings.max_song_seconds,
            limiter=RateLimiter(settings.requests_per_minute, 60.0),
            backoff_base_s=settings.retry_backoff_s,
        )

    def __repr__(self) -> str:
        return f"FunMusicClient(base_url={self.base_url!r}, api_key={self._api_key!r})"

    # ------------------------------------------------------------------------------------------ the one call

    async def generate(
        self,
        request: GenerationRequest,
        *,
        out_dir: Path,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Make one song. Raises :class:`InvalidInput` (before any network call) or a :class:`ServiceError`.

        The returned file is new in ``out_dir`` and belongs to the caller. On failure nothing is left there.
        """
        req, mode = request.validated()
        tag = uuid.uuid4().hex[:8]
        sink = _AudioSink(out_dir / f".{tag}-{uuid.uuid4().hex}.{req.format}.part", req.format)
        report = _Reporter(on_progress, tag)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            try:
                async with asyncio.timeout(self.total_deadline_s):
                    final = await self._generate_with_retries(req, mode, sink, report, tag)
                    if sink.bytes_written == 0:
                        await self._download_with_retries(final, sink, report, tag)
            except TimeoutError:
                raise ServiceTimeout(
                    f"no finished song within the {self.total_deadline_s:g} s deadline",
                    audio_delivered=sink.bytes_written > 0,
                ) from None
            await asyncio.to_thread(sink.close)
            result = await self._finish(req, mode, sink, final, out_dir)
        except BaseException:
            await asyncio.shield(sink.dispose())
            raise
        log.info(
            "fun-music %s request_id=%s done: %s %s, %.1f s of audio, %d bytes, billed %s s, in %.1f s",
            tag,
            result.request_id,
            mode.value,
            req.format,
            result.duration_s,
            result.audio_bytes,
            result.billed_seconds,
            loop.time() - started,
        )
        return result

    async def _finish(
        self, req: GenerationRequest, mode: Mode, sink: _AudioSink, final: _Final, out_dir: Path
    ) -> GenerationResult:
        """Take the decode check's measure of the audio, repair a streamed WAV's sizes, and name the file."""
        try:
            info = await sink.measure()
            if sink.head[:4] == b"RIFF":  # ValueError: no data chunk in the first 64 KiB, so no sizes to set
                await asyncio.to_thread(repair_wav_file, sink.path)
        except (FfmpegError, ValueError) as exc:
            # The service said "stop" and charged for the song; sending it again would pay twice for the same fault.
            raise BrokenStream(
                f"the assembled audio does not decode: {exc}",
                request_id=final.request_id,
                retryable=False,
                audio_delivered=True,
            ) from None
        if info.duration_s > self.max_song_seconds:
            raise SongTooLong(
                f"the song is {info.duration_s:.1f} s long, over the {self.max_song_seconds:g} s cap "
                f"(request_id={final.request_id}, url={'yes' if final.url else 'no'})",
                duration_s=info.duration_s,
                limit_s=self.max_song_seconds,
                request_id=final.request_id,
            )
        path = await asyncio.to_thread(_final_path, sink.path, out_dir, final.request_id, req.format)
        return GenerationResult(
            audio_path=path,
            format=req.format,
            lyrics=final.lyrics,
            duration_s=info.duration_s,
            sample_rate=info.sample_rate,
            channels=info.channels,
            request_id=final.request_id,
            url=final.url,
            url_expires_at=final.expires_at,
            billed_seconds=final.billed_seconds,
            audio_bytes=sink.bytes_written,
            mode=mode,
            extra={
                "service_sample_rate": final.sample_rate,
                "service_channels": final.channels,
                "audio_id": final.audio_id,
                "codec": info.codec,
                "dropped_wav_headers": sink.dropped_headers,
            },
        )

    # -------------------------------------------------------------------------------------------- retrying

    def backoff_delay(self, attempt: int, exc: ServiceError) -> float:
        """Exponential backoff with full jitter; a server's ``retry-after`` is honoured (up to the cap)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = random.uniform(0.0, cap)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            delay = max(delay, min(float(retry_after), self.backoff_max_s))
        return delay

    async def _retrying(
        self,
        what: str,
        tag: str,
        report: _Reporter,
        once: Callable[[], Awaitable[_Final | None]],
    ) -> _Final | None:
        attempt = 0
        while True:
            attempt += 1
            report.attempt = attempt
            try:
                return await once()
            except ServiceError as exc:
                if not exc.retryable or attempt > self.max_retries:
                    log.warning("fun-music %s %s failed for good (attempt %d): %s", tag, what, attempt, exc)
                    raise
                delay = self.backoff_delay(attempt, exc)
                log.warning("fun-music %s %s attempt %d failed, retrying in %.2f s: %s", tag, what, attempt, delay, exc)
                await report(ProgressStage.RETRYING)
                await self._sleep(delay)

    async def _generate_with_retries(
        self, req: GenerationRequest, mode: Mode, sink: _AudioSink, report: _Reporter, tag: str
    ) -> _Final:
        async def once() -> _Final:
            await report(ProgressStage.CONNECTING)
            await sink.start()
            try:
                return await self._attempt(req, mode, sink, report, tag)
            except ServiceError as exc:
                if sink.bytes_written:
                    exc.audio_delivered = True
                raise

        final = await self._retrying("generation", tag, report, once)
        assert final is not None
        return final

    # ---------------------------------------------------------------------------------------- one request

    def _headers(self, streaming: bool) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key.reveal()}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if streaming else "application/json",
        }
        if streaming:
            headers["X-DashScope-SSE"] = "enable"
        return headers

    def _scrub(self, text: str) -> str:
        """Belt and braces: whatever text leaves this client, the key is not in it."""
        key = self._api_key.reveal()
        return text.replace(key, "********") if key else text

    async def _attempt(
        self, req: GenerationRequest, mode: Mode, sink: _AudioSink, report: _Reporter, tag: str
    ) -> _Final:
        streaming = mode is Mode.STREAMING
        if self._limiter is not None:
            await self._limiter.acquire()
        log.info(
            "fun-music %s POST %s (%s, %s, attempt %d)", tag, self.endpoint, mode.value, req.format, report.attempt
        )
        state = _StreamState()
        try:
            async with self._session.post(
                self.endpoint,
                json=req.body(),
                headers=self._headers(streaming),
                timeout=self._timeout,
                read_bufsize=READ_BUFSIZE,
            ) as resp:
                return await self._response(resp, sink, report, state, tag)
        except ServiceError as exc:
            exc.request_id = exc.request_id or state.request_id
            exc.audio_delivered = exc.audio_delivered or state.audio_seen
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, state) from None

    def _transport_error(self, exc: BaseException, state: _StreamState) -> ServiceError:
        """aiohttp's failures as songbot's: connecting, waiting (idle timeout), a cut body, a dropped link."""
        err: ServiceError
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            err = ConnectionFailed(self._scrub(f"could not connect to DashScope in time: {exc}"))
        elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
            err = ServiceTimeout(
                self._scrub(f"DashScope sent nothing for {self.idle_timeout_s:g} s: {exc or type(exc).__name__}")
            )
        elif isinstance(exc, aiohttp.ClientPayloadError):
            err = BrokenStream(self._scrub(f"the response was cut off: {exc}"))
        else:
            err = ConnectionFailed(self._scrub(f"connection to DashScope failed: {type(exc).__name__}: {exc}"))
        err.request_id = state.request_id
        err.audio_delivered = state.audio_seen
        return err

    async def _response(
        self, resp: aiohttp.ClientResponse, sink: _AudioSink, report: _Reporter, state: _StreamState, tag: str
    ) -> _Final:
        ctype = resp.content_type.lower()
        if resp.status != 200:
            raw = await _read_capped(resp, ERROR_BODY_MAX)
            body = _error_body(raw, resp.status, is_sse=ctype == "text/event-stream")
            header_id = resp.headers.get("x-request-id") or resp.headers.get("X-DashScope-Request-Id")
            if body.request_id is None and header_id:
                body = replace(body, request_id=clamp_id(header_id, "request_id"))
            raise self._classified(body, tag, retry_after=parse_retry_after(resp.headers), where="HTTP")
        if ctype == "text/event-stream":
            return await self._read_stream(resp, sink, report, state, tag)
        # A plain JSON answer: the non-streaming body, also when it answers an SSE request (the SDK does the same).
        raw = await _read_capped(resp, JSON_BODY_MAX)
        try:
            obj = _json_loads(raw)
        except ValueError:
            raise BrokenStream(f"DashScope answered {ctype or 'no content type'} that is not JSON") from None
        if not isinstance(obj, dict):
            raise BrokenStream("DashScope answered JSON that is not an object")
        return await self._whole_body(obj, sink, tag, resp.status)

    def _classified(
        self, body: ErrorBody, tag: str, *, retry_after: float | None = None, where: str = ""
    ) -> ServiceError:
        body = replace(body, message=self._scrub(body.message))
        if self.on_service_error is not None:
            self.on_service_error(body.code)
        log.warning(
            "fun-music %s error %s request_id=%s status=%s: %s",
            tag,
            body.code,
            body.request_id,
            body.status,
            body.message,
        )
        return classify(body, retry_after=retry_after, where=where)

    async def _whole_body(self, obj: dict[str, Any], sink: _AudioSink, tag: str, status: int) -> _Final:
        """A non-streaming answer: an error, or a finished song whose audio is (normally) at its url."""
        if "output" not in obj and obj.get("code"):
            raise self._classified(body_from_json(obj, status), tag, where="body")
        output = _as_dict(obj.get("output"))
        final = _final_from(obj, None)
        data = _as_dict(output.get("audio")).get("data")
        if isinstance(data, str) and data:
            audio = await asyncio.to_thread(decode_audio, data, final.request_id, False)
            await sink.begin_check(audio[:HEAD_BYTES])
            await asyncio.to_thread(sink.write_chunks, [audio])
        if not sink.bytes_written and not final.url:
            raise BrokenStream("DashScope finished without audio or a url", request_id=final.request_id)
        log.info("fun-music %s request_id=%s finished (non-streaming)", tag, final.request_id)
        return final

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, sink: _AudioSink, report: _Reporter, state: _StreamState, tag: str
    ) -> _Final:
        parser = SSEParser(self.max_event_bytes)
        writer = _WriteBehind(sink, report)
        try:
            final: _Final | None = None
            try:
                async for chunk in resp.content.iter_any():
                    final = await self._events(parser.feed(chunk), writer, state, tag)
                    if final is not None:
                        break
                else:
                    final = await self._events(parser.close(), writer, state, tag)
            except EventTooLarge as exc:
                raise BrokenStream(
                    f"the stream is broken: {exc}", request_id=state.request_id, audio_delivered=state.audio_seen
                ) from None
            await writer.drain()
        except BaseException:
            await writer.abandon()
            raise
        if final is not None:
            return final
        raise BrokenStream(
            f'the stream closed after {state.events} events without finish_reason "stop"',
            request_id=state.request_id,
            audio_delivered=state.audio_seen,
        )

    async def _events(
        self, events: list[SSEEvent], writer: _WriteBehind, state: _StreamState, tag: str
    ) -> _Final | None:
        """Handle one read's events in order; their audio goes to the writer as one batch."""
        payloads: list[str | bytes | memoryview] = []
        final: _Final | None = None
        try:
            for event in events:
                state.events += 1
                if event.event == "error":
                    raise self._stream_error(event, state, tag)
                if event.event is not None and event.event not in RESULT_EVENTS:
                    log.debug("fun-music %s ignoring event %r", tag, event.event)
                    continue
                if _blank(event):
                    continue
                obj = self._event_json(event, state)
                if "output" not in obj and obj.get("code"):
                    raise self._classified(body_from_json(obj, event.http_status), tag, where="stream")
                output = _as_dict(obj.get("output"))
                if state.request_id is None and obj.get("request_id"):
                    state.request_id = clamp_id(obj["request_id"], "request_id")
                    log.info("fun-music %s request_id=%s streaming", tag, state.request_id)
                data = _as_dict(output.get("audio")).get("data")
                if isinstance(data, str | memoryview) and len(data):
                    payloads.append(data)
                    state.audio_seen = True
                    state.audio_bytes += len(data) * 3 // 4
                    if state.audio_bytes > self.download_max_bytes:
                        raise DownloadError(
                            f"the streamed song passed the {self.download_max_bytes}-byte cap",
                            request_id=state.request_id,
                        )
                if _is_stop(output):
                    final = _final_from(obj, state.request_id)
                    break
            if payloads:
                await writer.submit(payloads, state.request_id)
        except ServiceError as exc:
            if exc.request_id is None:
                exc.request_id = state.request_id
            exc.audio_delivered = exc.audio_delivered or state.audio_seen
            raise
        return final

    def _event_json(self, event: SSEEvent, state: _StreamState) -> dict[str, Any]:
        try:
            obj = parse_event_json(event.raw)
        except ValueError:
            raise BrokenStream(
                f"event {event.id or state.events} carries data that is not JSON", request_id=state.request_id
            ) from None
        if not isinstance(obj, dict):
            raise BrokenStream(f"event {event.id or state.events} carries JSON that is not an object")
        return obj

    def _stream_error(self, event: SSEEvent, state: _StreamState, tag: str) -> ServiceError:
        body = parse_error_body(event.data, event.http_status)
        if body.request_id is None:
            body = replace(body, request_id=state.request_id)
        return self._classified(body, tag, where="mid-stream")

    # ------------------------------------------------------------------------------------------- download

    def check_download_url(self, url: str) -> URL:
        """The url, if it may be fetched: http(s) on DashScope's OSS, the API's own host, or an allowed extra."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            raise DownloadError("the audio url is not a valid URL") from None
        host = (parsed.host or "").lower().rstrip(".")
        if parsed.scheme not in ("http", "https") or not host:
            raise DownloadError(f"refusing to download from a non-http(s) url ({parsed.scheme or 'no scheme'})")
        if not (host.endswith(OSS_HOST_SUFFIX) or host in self.allowed_hosts):
            raise DownloadError(f"refusing to download audio from {host}: not a DashScope host")
        return parsed

    async def _download_with_retries(self, final: _Final, sink: _AudioSink, report: _Reporter, tag: str) -> None:
        if not final.url:
            raise BrokenStream("DashScope finished without audio or a url", request_id=final.request_id)
        url = final.url

        async def once() -> None:
            await self._download(url, sink, report, tag)

        try:
            await self._retrying("download", tag, report, once)
        except DownloadError as exc:
            exc.request_id = exc.request_id or final.request_id
            exc.retryable = False  # our own retries are spent; a caller must not pay for a new song for this
            raise

    async def _download(self, url: str, sink: _AudioSink, report: _Reporter, tag: str) -> None:
        current = self.check_download_url(url)
        for _hop in range(MAX_REDIRECTS + 1):
            await report(ProgressStage.DOWNLOADING)
            try:
                async with self._session.get(
                    current, allow_redirects=False, timeout=self._timeout, read_bufsize=READ_BUFSIZE
                ) as resp:
                    if resp.status in REDIRECT_STATUSES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise DownloadError(f"redirect {resp.status} without a Location", status=resp.status)
                        current = self.check_download_url(str(current.join(URL(location))))
                        continue
                    await self._save_download(resp, sink, report, tag)
                    return
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                raise DownloadError(f"downloading the audio timed out: {exc}", retryable=True) from None
            except aiohttp.ClientError as exc:
                raise DownloadError(
                    f"downloading the audio failed: {type(exc).__name__}: {exc}", retryable=True
                ) from None
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the audio")

    async def _save_download(self, resp: aiohttp.ClientResponse, sink: _AudioSink, report: _Reporter, tag: str) -> None:
        if resp.status != 200:
            retryable = resp.status >= 500 or resp.status in (408, 429)
            raise DownloadError(f"the audio url answered HTTP {resp.status}", status=resp.status, retryable=retryable)
        cap = self.download_max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise DownloadError(f"the audio is {resp.content_length} bytes, over the {cap}-byte limit")
        await sink.start()
        async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
            if sink.bytes_written + len(chunk) > cap:
                raise DownloadError(f"the audio is over the {cap}-byte limit")
            if not sink.bytes_written:
                await sink.begin_check(chunk[:HEAD_BYTES])
            await asyncio.to_thread(sink.write_raw, chunk)
            await report(ProgressStage.DOWNLOADING, sink.bytes_written, sink.seconds())
        if resp.content_length is not None and sink.bytes_written != resp.content_length:
            raise DownloadError("the audio download ended early", retryable=True)
        log.info("fun-music %s downloaded %d bytes from %s", tag, sink.bytes_written, resp.url.host)


@dataclass
class _StreamState:
    request_id: str | None = None
    events: int = 0
    audio_seen: bool = False
    audio_bytes: int = 0  # decoded size so far, from the base64 lengths


class _WriteBehind:
    """Writes the audio (to the file and the decode check) in one worker thread, in order, while the loop reads.

    Events' base64 is decoded on the loop, each event on its own, as long as an event is small
    (``INLINE_DECODE_MAX``, well under a millisecond): that is cheaper than in the worker, which has to win the
    GIL back from the busy loop for every batch (up to a switch interval each time); the worker's writes release
    the GIL. A larger event is decoded by the worker, so that a multi-MiB one cannot stall the bot's other work.

    The loop hands over about ``BATCH_BYTES`` of base64 at a time and does not wait for it; it waits only when
    more than ``MAX_PENDING_BYTES`` are queued, and for the rest at the end. Memory stays bounded by those two
    figures. A bad event (invalid base64) fails at once, or fails its batch, before the song can be declared done.
    """

    MAX_PENDING_BYTES = 4 * 1024 * 1024  # with 8 MiB the decoded audio queued alone could pass 0.15x of a 200 s WAV
    BATCH_BYTES = 1024 * 1024  # hand the worker about this much at a time: each hand-over costs a thread wake-up
    INLINE_DECODE_MAX = 256 * 1024

    def __init__(self, sink: _AudioSink, report: _Reporter) -> None:
        self._sink = sink
        self._report = report
        self._carry = b""  # base64 characters after an event's last whole 4-character quantum
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="songbot-audio")
        self._pending: deque[tuple[asyncio.Future[None], int]] = deque()
        self._pending_bytes = 0
        self._batch: list[str | bytes] = []
        self._batch_bytes = 0
        self._request_id: str | None = None
        self._checking = False
        self.meter = _Meter()

    async def submit(self, payloads: Sequence[str | bytes | memoryview], request_id: str | None) -> None:
        """Queue one read's base64 payloads: decoded (each on its own) and written in order by the worker.

        An event cut mid-quantum (a length that is not a multiple of 4) keeps its last 1-3 characters for the
        next event (``docs/dashscope.md`` §6.2), so each part decoded is whole quanta; invalid characters still
        fail, strictly. A payload is the base64's bytes (normally a view of the event as received); a str is
        taken as its UTF-8, where anything not ASCII is as invalid as it was in the str.
        """
        for whole in payloads:
            payload = self._whole_quanta(whole.encode("utf-8", "surrogatepass") if isinstance(whole, str) else whole)
            if not payload:
                continue
            self._batch_bytes += len(payload)
            # the first bytes tell the rate that progress needs, so they are decoded here whatever their size
            if len(payload) <= self.INLINE_DECODE_MAX or len(self.meter.head) < HEAD_BYTES:
                data = decode_audio(payload, request_id, self.meter.count > 0)
                self.meter.add(data)
                self._batch.append(data)
            else:  # as a str for the worker (which takes bytes as decoded audio); latin-1 keeps every byte
                text = str(payload, "latin-1")
                self.meter.count += _decoded_size(text)
                self._batch.append(text)
        self._request_id = request_id
        if self._batch_bytes >= self.BATCH_BYTES:
            await self._hand_over()
        await self._report(ProgressStage.GENERATING, self.meter.count, self.meter.seconds())

    def _whole_quanta(self, payload: bytes | memoryview) -> bytes | memoryview:
        """``payload`` behind the carried characters, less a new tail that does not fill a quantum (carried)."""
        if self._carry:
            payload, self._carry = self._carry + payload, b""
        cut = len(payload) % 4
        if cut:
            payload, self._carry = payload[:-cut], bytes(payload[-cut:])
        return payload

    def _flush_carry(self) -> None:
        """The stream has ended: base64 left over is a last quantum sent without its ``=`` padding (2 or 3
        characters, padded here) or a broken one (1 character, which no base64 ends with)."""
        carry, self._carry = self._carry, b""
        if not carry:
            return
        if len(carry) == 1:
            raise BrokenStream(
                "the stream's base64 ended one character into a 4-character quantum",
                request_id=self._request_id,
                audio_delivered=self.meter.count > 0,
            )
        data = decode_audio(carry + b"=" * (4 - len(carry)), self._request_id, self.meter.count > 0)
        self.meter.add(data)
        self._batch.append(data)
        self._batch_bytes += len(carry)

    async def _hand_over(self) -> None:
        if not self._batch:
            return
        if not self._checking:  # the first bytes are in: they tell ffmpeg what it is about to decode
            await self._sink.begin_check(bytes(self.meter.head))
            self._checking = True
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        loop = asyncio.get_running_loop()
        write = self._sink.write_stream_payloads
        self._pending.append((loop.run_in_executor(self._executor, write, batch, self._request_id), size))
        self._pending_bytes += size
        while self._pending_bytes > self.MAX_PENDING_BYTES:
            await self._wait_oldest()

    async def _wait_oldest(self) -> None:
        future, size = self._pending.popleft()
        self._pending_bytes -= size
        await future

    async def drain(self) -> None:
        """Write what is left, wait for every queued write (raising the first failure), let the worker go."""
        self._flush_carry()
        await self._hand_over()
        while self._pending:
            await self._wait_oldest()
        self._executor.shutdown(wait=False)

    async def abandon(self) -> None:
        """The stream failed: wait until the worker is idle, since the file is about to be reset or deleted."""
        self._sink.kill_check()  # the song is lost: do not wait for ffmpeg to read what is queued for it
        self._pending.clear()
        self._pending_bytes = 0
        self._batch, self._batch_bytes = [], 0
        self._carry = b""
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.to_thread(self._executor.shutdown, True))


def _error_body(raw: bytes, status: int, *, is_sse: bool) -> ErrorBody:
    """An HTTP error's body: JSON, or (as DashScope sometimes sends) an SSE ``event:error`` block."""
    if is_sse:
        parser = SSEParser()
        for event in parser.feed(raw) + parser.close():
            if event.data.strip():
                return parse_error_body(event.data, event.http_status or status)
    return parse_error_body(raw, status)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, but no more than ``limit`` bytes of it (an error page cannot fill memory)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


__all__ = ["GENERATION_PATH", "FunMusicClient", "mp3_bitrate", "wav_byte_rate"]
