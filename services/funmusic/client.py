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

This module is the request and its retries; beside it: ``wire.py`` (what events, the finishing event and error
bodies say; base64), ``sink.py`` (the file being written, the decode check, progress), ``download.py`` (the
non-streaming download), ``sse.py`` (the event parser) and ``errors_map.py`` (error codes to exceptions).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    SongTooLong,
)
from services.ffmpeg import FfmpegError
from services.funmusic.download import Downloader
from services.funmusic.errors_map import body_from_json, clamp_id, classify, parse_error_body, parse_retry_after
from services.funmusic.limiter import RateLimiter
from services.funmusic.request import GenerationRequest, GenerationResult, Mode, ProgressCallback, ProgressStage
from services.funmusic.sink import HEAD_BYTES, AudioSink, Reporter, WriteBehind, final_path
from services.funmusic.sse import EventTooLarge, SSEEvent, SSEParser
from services.funmusic.wire import (
    RESULT_EVENTS,
    Final,
    as_dict,
    decode_audio,
    error_body,
    final_from,
    is_blank,
    is_stop,
    json_loads,
    parse_event_json,
)
from services.settings import Secret, Settings
from services.wav import repair_wav_file

log = logging.getLogger(__name__)

GENERATION_PATH = "/services/audio/music/generation"
ERROR_BODY_MAX = 1024 * 1024
JSON_BODY_MAX = 64 * 1024 * 1024
#: One SSE event (or a line still waiting for its end) may be as large as a whole non-streaming answer, no larger.
MAX_EVENT_BYTES = JSON_BODY_MAX
#: Songs longer than this are refused before anything decodes them into memory (``SONGBOT_MAX_SONG_SECONDS``).
MAX_SONG_SECONDS = 900.0
#: aiohttp's default 64 KiB read buffer pauses the socket every 128 KiB; audio streams flow better with room, but
#: what aiohttp buffers (up to twice this) is read, joined and parsed at once, so more only costs memory: with 1 MiB
#: a song's peak was 10 MB instead of 5 (bench/stream.py), at the same speed.
READ_BUFSIZE = 256 * 1024


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
        self._limiter = limiter
        self._sleep = sleep
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=idle_timeout_s)
        self._downloader = Downloader(
            session,
            timeout=self._timeout,
            read_bufsize=READ_BUFSIZE,
            allowed_hosts=(base.host, *extra_download_hosts),
            max_bytes=download_max_bytes,
        )
        self.allowed_hosts = self._downloader.allowed_hosts
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
        sink = AudioSink(out_dir / f".{tag}-{uuid.uuid4().hex}.{req.format}.part", req.format)
        report = Reporter(on_progress, tag)
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
        self, req: GenerationRequest, mode: Mode, sink: AudioSink, final: Final, out_dir: Path
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
        path = await asyncio.to_thread(final_path, sink.path, out_dir, final.request_id, req.format)
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
        report: Reporter,
        once: Callable[[], Awaitable[Final | None]],
    ) -> Final | None:
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
        self, req: GenerationRequest, mode: Mode, sink: AudioSink, report: Reporter, tag: str
    ) -> Final:
        async def once() -> Final:
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

    async def _attempt(self, req: GenerationRequest, mode: Mode, sink: AudioSink, report: Reporter, tag: str) -> Final:
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
        self, resp: aiohttp.ClientResponse, sink: AudioSink, report: Reporter, state: _StreamState, tag: str
    ) -> Final:
        ctype = resp.content_type.lower()
        if resp.status != 200:
            raw = await read_capped(resp, ERROR_BODY_MAX)
            body = error_body(raw, resp.status, is_sse=ctype == "text/event-stream")
            header_id = resp.headers.get("x-request-id") or resp.headers.get("X-DashScope-Request-Id")
            if body.request_id is None and header_id:
                body = replace(body, request_id=clamp_id(header_id, "request_id"))
            raise self._classified(body, tag, retry_after=parse_retry_after(resp.headers), where="HTTP")
        if ctype == "text/event-stream":
            return await self._read_stream(resp, sink, report, state, tag)
        # A plain JSON answer: the non-streaming body, also when it answers an SSE request (the SDK does the same).
        raw = await read_capped(resp, JSON_BODY_MAX)
        try:
            obj = json_loads(raw)
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

    async def _whole_body(self, obj: dict[str, Any], sink: AudioSink, tag: str, status: int) -> Final:
        """A non-streaming answer: an error, or a finished song whose audio is (normally) at its url."""
        if "output" not in obj and obj.get("code"):
            raise self._classified(body_from_json(obj, status), tag, where="body")
        output = as_dict(obj.get("output"))
        final = final_from(obj, None)
        data = as_dict(output.get("audio")).get("data")
        if isinstance(data, str) and data:
            audio = await asyncio.to_thread(decode_audio, data, final.request_id, False)
            await sink.begin_check(audio[:HEAD_BYTES])
            await asyncio.to_thread(sink.write_chunks, [audio])
        if not sink.bytes_written and not final.url:
            raise BrokenStream("DashScope finished without audio or a url", request_id=final.request_id)
        log.info("fun-music %s request_id=%s finished (non-streaming)", tag, final.request_id)
        return final

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, sink: AudioSink, report: Reporter, state: _StreamState, tag: str
    ) -> Final:
        parser = SSEParser(self.max_event_bytes)
        writer = WriteBehind(sink, report)
        try:
            final: Final | None = None
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

    async def _events(self, events: list[SSEEvent], writer: WriteBehind, state: _StreamState, tag: str) -> Final | None:
        """Handle one read's events in order; their audio goes to the writer as one batch."""
        payloads: list[str | bytes | memoryview] = []
        final: Final | None = None
        try:
            for event in events:
                state.events += 1
                if event.event == "error":
                    raise self._stream_error(event, state, tag)
                if event.event is not None and event.event not in RESULT_EVENTS:
                    log.debug("fun-music %s ignoring event %r", tag, event.event)
                    continue
                if is_blank(event):
                    continue
                obj = self._event_json(event, state)
                if "output" not in obj and obj.get("code"):
                    raise self._classified(body_from_json(obj, event.http_status), tag, where="stream")
                output = as_dict(obj.get("output"))
                if state.request_id is None and obj.get("request_id"):
                    state.request_id = clamp_id(obj["request_id"], "request_id")
                    log.info("fun-music %s request_id=%s streaming", tag, state.request_id)
                data = as_dict(output.get("audio")).get("data")
                if isinstance(data, str | memoryview) and len(data):
                    payloads.append(data)
                    state.audio_seen = True
                    state.audio_bytes += len(data) * 3 // 4
                    if state.audio_bytes > self.download_max_bytes:
                        raise DownloadError(
                            f"the streamed song passed the {self.download_max_bytes}-byte cap",
                            request_id=state.request_id,
                        )
                if is_stop(output):
                    final = final_from(obj, state.request_id)
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
        return self._downloader.check_url(url)

    async def _download_with_retries(self, final: Final, sink: AudioSink, report: Reporter, tag: str) -> None:
        if not final.url:
            raise BrokenStream("DashScope finished without audio or a url", request_id=final.request_id)
        url = final.url

        async def once() -> None:
            await self._downloader.fetch(url, sink, report, tag)

        try:
            await self._retrying("download", tag, report, once)
        except DownloadError as exc:
            exc.request_id = exc.request_id or final.request_id
            exc.retryable = False  # our own retries are spent; a caller must not pay for a new song for this
            raise


@dataclass
class _StreamState:
    request_id: str | None = None
    events: int = 0
    audio_seen: bool = False
    audio_bytes: int = 0  # decoded size so far, from the base64 lengths


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, but no more than ``limit`` bytes of it (an error page cannot fill memory)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


__all__ = ["GENERATION_PATH", "FunMusicClient"]
