"""A Fun-Music simulator: an aiohttp app that speaks DashScope's wire format (``docs/dashscope.md``).

It serves ``POST {base}/services/audio/music/generation`` streaming (``X-DashScope-SSE: enable``) and not, returns
real decodable audio of the requested length (made by ffmpeg, cached), lyrics made from the prompt (or the lyrics it
was given), and an OSS-style url on itself that it also serves. A :class:`Scenario` switches on each fault the
reference documents, so the client's handling of every one of them can be tested over a real socket.

``SONGBOT_SIMULATE=1`` (or no ``DASHSCOPE_API_KEY``) runs the bot and the CLI against it in-process
(:func:`start_simulator_for`). ``python -m services.offline.simulator`` runs it on its own (the benchmark does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import re
import struct
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.audio_headers import find_data_chunk
from services.ffmpeg import ffmpeg_exe, render_test_audio
from services.funmusic.request import FORMATS, GENDERS, MODEL_PREVIEW, MODELS
from services.settings import Secret, Settings
from services.signals import stop_on_signals

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
GENERATION_PATH = f"{API_PREFIX}/services/audio/music/generation"
HUGE_LINE_BYTES = 620_000
#: how much of an endless line (Scenario.endless_line) is sent at most before the stream stalls
ENDLESS_LINE_BYTES = 96 * 1024 * 1024
_EXPIRES_MARK = "\x00expires_at\x00"
_BILLED_MARK = "\x00billed\x00"
WATERMARK_SECONDS = 1.0
URL_LIFETIME_S = 24 * 3600

#: name -> (HTTP status, DashScope code, message); the names are what Scenario.pre_error / mid_error take.
ERRORS: dict[str, tuple[int, str, str]] = {
    "InvalidApiKey": (401, "InvalidApiKey", "Invalid API-key provided."),
    "AccessDenied": (403, "AccessDenied", "Access denied."),
    "Arrearage": (400, "Arrearage", "Access denied, please make sure your account is in good standing."),
    "Throttling": (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
    "DataInspectionFailed": (400, "DataInspectionFailed", "Input data may contain inappropriate content."),
    "InternalError": (500, "InternalError", "An internal error has occured, please try again later."),
}


@dataclass
class Scenario:
    """What the simulator does with the next requests. The defaults make a normal, successful song."""

    duration_s: float = 4.0
    sample_rate: int = 48000
    channels: int = 2
    chunk_bytes: int = 32768  # decoded audio bytes per event
    chunk_delay_s: float = 0.0
    crlf: bool = False
    space_after_colon: bool = False
    pre_error: str | None = None  # a key of ERRORS
    pre_error_times: int | None = None  # fail only the first N requests; None = always
    pre_error_sse: bool = False  # send the pre-stream error as an SSE error block (Arrearage if pre_error is None)
    retry_after: str | None = None  # a Retry-After header on pre-stream errors
    mid_error: str | None = None  # a key of ERRORS, sent as event:error after mid_error_after_chunks events
    mid_error_after_chunks: int = 1
    drop_after_chunks: int | None = None  # close the connection abruptly
    stall_after_chunks: int | None = None
    stall_s: float = 2.0
    huge_line: bool = False  # one data line over 600 KB
    int_sample_rate: bool = False
    omit_lyrics: bool = False
    omit_url: bool = False
    no_stop: bool = False  # end the stream cleanly after the last audio event, without the final event
    invalid_base64_at_chunk: int | None = None
    base64_mid_quantum: bool = False  # cut the song's base64 so that every event's length is not a multiple of 4
    endless_line: bool = False  # after the first event, a data line that never ends (capped at ENDLESS_LINE_BYTES)
    request_id: str | None = None  # the request id every body carries (e.g. one longer than a database column)
    error_code: str | None = None  # the code pre_error / mid_error send instead of their own
    expires_at_raw: str | None = None  # raw JSON for every audio.expires_at, e.g. "1774937185000", "1e999"
    billed_raw: str | None = None  # raw JSON for usage.duration, e.g. "Infinity"
    malformed_line_at_chunk: int | None = None  # a data line that is not JSON
    json_response_to_sse: bool = False
    download_status: int = 200
    download_delay_s: float = 0.0
    download_host: str | None = None  # put this host in the url instead of the simulator's own
    download_redirect_to: str | None = None  # 302 there; "{name}" is replaced by the file name
    extra_download_bytes: int = 0  # zero bytes appended to the downloaded file
    download_chunked: bool = False  # send the download without Content-Length


@dataclass
class _Song:
    request_id: str
    fmt: str
    audio: bytes
    duration_s: float
    lyrics: str
    expires_at: int
    url: str
    channels: int
    sample_rate: int


_AUDIO_CACHE: OrderedDict[tuple[float, int, int, str], bytes] = OrderedDict()
_AUDIO_CACHE_SIZE = 6
#: (id of the song's audio, format, chunking...) -> (that audio, its events' base64); see _stream_payloads
_PAYLOAD_CACHE: OrderedDict[tuple[int, str, int, bool, bool], tuple[bytes, list[str]]] = OrderedDict()


async def cached_audio(duration_s: float, sample_rate: int, channels: int, fmt: str) -> bytes:
    """Rendered test audio, cached per (duration, rate, channels, format): ffmpeg runs once per shape."""
    key = (round(duration_s, 3), sample_rate, channels, fmt)
    audio = _AUDIO_CACHE.get(key)
    if audio is None:
        await asyncio.to_thread(ffmpeg_exe)  # the first lookup searches PATH (blocking); later calls are cached
        audio = await render_test_audio(duration_s, sample_rate=sample_rate, channels=channels, fmt=fmt)
        _AUDIO_CACHE[key] = audio
        while len(_AUDIO_CACHE) > _AUDIO_CACHE_SIZE:
            _AUDIO_CACHE.popitem(last=False)
    else:
        _AUDIO_CACHE.move_to_end(key)
    return audio


def streamed_wav(audio: bytes) -> bytes:
    """The WAV as a streaming server sends it: sizes in the header are 0xFFFFFFFF placeholders."""
    data_at = find_data_chunk(audio[:65536])
    if data_at is None:
        return audio
    head = bytearray(audio[: data_at + 8])
    struct.pack_into("<I", head, 4, 0xFFFFFFFF)
    struct.pack_into("<I", head, data_at + 4, 0xFFFFFFFF)
    return bytes(head) + audio[data_at + 8 :]


def lyrics_for(inp: dict[str, Any]) -> str:
    """Lyrics as the service would return them: the given lyrics, or verses built from the prompt's words."""
    if inp.get("is_instrumental"):
        return ""
    lyrics = inp.get("lyrics")
    if isinstance(lyrics, str) and lyrics.strip():
        return lyrics.strip()
    words = re.findall(r"\w+", str(inp.get("prompt") or "")) or ["la"]
    lines = [" ".join(words[i : i + 5]).capitalize() for i in range(0, min(len(words), 20), 5)]
    chorus = " ".join(words[:3]).capitalize()
    return "[verse]\n" + ",\n".join(lines) + ".\n\n[chorus]\n" + f"{chorus}, oh {chorus},\n{chorus} tonight."


def _validate(body: object) -> str | None:
    """DashScope's 400 InvalidParameter checks, as far as they are documented. Returns the message or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    model = body.get("model")
    if model not in MODELS:
        return f"Model not exist or not supported: {model!r}."
    inp = body.get("input")
    if not isinstance(inp, dict):
        return "Field required: input."
    if "parameters" in body and not isinstance(body["parameters"], dict):
        return "parameters must be an object."
    prompt, lyrics = inp.get("prompt"), inp.get("lyrics")
    for name, value in (("prompt", prompt), ("lyrics", lyrics)):
        if value is not None and not isinstance(value, str):
            return f"input.{name} must be a string."
    if not (prompt or "").strip() and not (lyrics or "").strip():
        return "At least one of input.prompt and input.lyrics is required."
    if model == MODEL_PREVIEW and not (prompt or "").strip():
        return "input.prompt is required for fun-music-preview."
    if inp.get("format", "mp3") not in FORMATS:
        return "input.format must be mp3 or wav."
    if inp.get("gender", "female") not in GENDERS:
        return "input.gender must be male or female."
    return None


class FunMusicSimulator:
    """The simulated DashScope. ``scenario`` may be replaced between calls; ``requests`` records every POST."""

    def __init__(self, api_key: str = "sim-key", scenario: Scenario | None = None) -> None:
        self._api_key = api_key
        self.scenario = scenario or Scenario()
        self.requests: list[dict[str, Any]] = []
        self.downloads: list[str] = []
        self.endless_line_sent = 0  # bytes of the last endless line written to the socket (Scenario.endless_line)
        self._songs: OrderedDict[str, _Song] = OrderedDict()
        self._pre_errors_sent = 0
        self._pre_errors_for: Scenario | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self.app = web.Application()
        self.app.router.add_post(GENERATION_PATH, self._generate)
        self.app.router.add_get("/oss/fun-music/{date}/{name}", self._oss)
        self.app.router.add_get("/mirror/{name}", self._mirror)

    def __repr__(self) -> str:
        return f"FunMusicSimulator(base_url={self.base_url!r})"

    # ----------------------------------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) and return the base url, ``http://host:port/api/v1``."""
        runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._host = host
        sockets = [addr for addr in runner.addresses if isinstance(addr, tuple)]
        self._port = int(sockets[0][1]) if sockets else port
        log.info("Fun-Music simulator listening on %s", self.base_url)
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}{API_PREFIX}"

    @property
    def download_host(self) -> str:
        """The host name the audio urls point at (the simulator's own unless the scenario says otherwise)."""
        return self.scenario.download_host or self._host

    # ------------------------------------------------------------------------------------------ generation

    def _error_json(self, name: str, request_id: str) -> tuple[int, str]:
        status, code, message = ERRORS[name]
        code = self.scenario.error_code or code
        return status, json.dumps({"request_id": request_id, "code": code, "message": message})

    def _json_error(self, status: int, code: str, message: str, request_id: str) -> web.Response:
        body = json.dumps({"request_id": request_id, "code": code, "message": message})
        return web.Response(status=status, text=body, content_type="application/json")

    def _take_pre_error(self) -> str | None:
        scenario = self.scenario
        if scenario is not self._pre_errors_for:
            self._pre_errors_for, self._pre_errors_sent = scenario, 0
        name = scenario.pre_error or ("Arrearage" if scenario.pre_error_sse else None)
        if name is None:
            return None
        if scenario.pre_error_times is not None and self._pre_errors_sent >= scenario.pre_error_times:
            return None
        self._pre_errors_sent += 1
        return name

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        request_id = self.scenario.request_id or str(uuid.uuid4())
        sse = request.headers.get("X-DashScope-SSE", "").strip().lower() == "enable"
        raw = await request.read()
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append({"path": request.path, "sse": sse, "body": body, "request_id": request_id})
        if request.headers.get("Authorization", "") != f"Bearer {self._api_key}":
            status, code, message = ERRORS["InvalidApiKey"]
            return self._json_error(status, code, message, request_id)
        problem = _validate(body)
        if problem is not None:
            return self._json_error(400, "InvalidParameter", problem, request_id)
        assert isinstance(body, dict)
        pre_error = self._take_pre_error()
        if pre_error is not None:
            return await self._pre_error(request, pre_error, request_id, sse)
        song = await self._make_song(body["input"], request_id)
        log.info(
            "simulator request_id=%s %s %s %.1f s", request_id, "sse" if sse else "json", song.fmt, song.duration_s
        )
        if sse and not self.scenario.json_response_to_sse:
            return await self._stream(request, song)
        return web.Response(text=self._dumps(self._final_body(song)), content_type="application/json")

    async def _pre_error(self, request: web.Request, name: str, request_id: str, sse: bool) -> web.StreamResponse:
        status, body = self._error_json(name, request_id)
        headers = {"Retry-After": self.scenario.retry_after} if self.scenario.retry_after else {}
        if self.scenario.pre_error_sse and sse:
            block = self._block(1, "error", status, body)
            return web.Response(status=status, body=block, content_type="text/event-stream", headers=headers)
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)

    async def _make_song(self, inp: dict[str, Any], request_id: str) -> _Song:
        scenario = self.scenario
        fmt = str(inp.get("format") or "mp3")
        duration = scenario.duration_s + (WATERMARK_SECONDS if inp.get("enable_aigc_watermark") else 0.0)
        audio = await cached_audio(duration, scenario.sample_rate, scenario.channels, fmt)
        expires_at = int(time.time()) + URL_LIFETIME_S
        name = f"{request_id}.{fmt}"
        day = datetime.now(UTC).strftime("%Y%m%d")
        host = scenario.download_host or self._host
        url = (
            f"http://{host}:{self._port}/oss/fun-music/{day}/{name}"
            f"?Expires={expires_at}&OSSAccessKeyId=simulator&Signature=c2ltdWxhdG9y"
        )
        song = _Song(
            request_id=request_id,
            fmt=fmt,
            audio=audio,
            duration_s=duration,
            lyrics=lyrics_for(inp),
            expires_at=expires_at,
            url=url,
            channels=scenario.channels,
            sample_rate=scenario.sample_rate,
        )
        self._songs[name] = song
        while len(self._songs) > 16:
            self._songs.popitem(last=False)
        return song

    def _final_body(self, song: _Song) -> dict[str, Any]:
        """The non-streaming body, which is also the final stream event."""
        scenario = self.scenario
        audio: dict[str, Any] = {"data": "", "expires_at": self._expires_at(song), "id": f"audio_{song.request_id}"}
        if not scenario.omit_url:
            audio["url"] = song.url
        extra: dict[str, Any] = {
            "channels": song.channels,
            "sample_rate": song.sample_rate if scenario.int_sample_rate else str(song.sample_rate),
        }
        if not scenario.omit_lyrics:
            extra["lyrics"] = song.lyrics
        return {
            "output": {"audio": audio, "extra_info": extra, "finish_reason": "stop"},
            "usage": {"duration": _BILLED_MARK if scenario.billed_raw is not None else round(song.duration_s)},
            "request_id": song.request_id,
        }

    def _expires_at(self, song: _Song) -> int | str:
        return _EXPIRES_MARK if self.scenario.expires_at_raw is not None else song.expires_at

    def _dumps(self, body: dict[str, Any]) -> str:
        """A body as JSON, with the scenario's raw values (which no Python value serialises to) in place."""
        text = json.dumps(body, separators=(",", ":"))
        scenario = self.scenario
        if scenario.expires_at_raw is not None:
            text = text.replace(json.dumps(_EXPIRES_MARK), scenario.expires_at_raw)
        if scenario.billed_raw is not None:
            text = text.replace(json.dumps(_BILLED_MARK), scenario.billed_raw)
        return text

    # ------------------------------------------------------------------------------------------- streaming

    def _block(self, event_id: int, event: str, status: int, data: str) -> bytes:
        eol = "\r\n" if self.scenario.crlf else "\n"
        sep = ": " if self.scenario.space_after_colon else ":"
        return (
            f"id{sep}{event_id}{eol}event{sep}{event}{eol}:HTTP_STATUS/{status}{eol}data{sep}{data}{eol}{eol}"
        ).encode()

    def _chunks(self, audio: bytes) -> list[bytes]:
        size = max(1, self.scenario.chunk_bytes)
        first = max(size, 480_000) if self.scenario.huge_line else size
        chunks = [audio[:first]]
        chunks += [audio[i : i + size] for i in range(first, len(audio), size)]
        return [c for c in chunks if c]

    def _payloads(self, chunks: list[bytes]) -> list[str]:
        """Each event's base64: each chunk encoded on its own, or (``base64_mid_quantum``) the whole song's
        base64 cut 1 to 3 characters past a quantum, so no event's length is a multiple of 4 but the last's may."""
        if not self.scenario.base64_mid_quantum:
            return [base64.b64encode(chunk).decode("ascii") for chunk in chunks]
        whole = base64.b64encode(b"".join(chunks)).decode("ascii")
        size = max(4, len(whole) // max(1, len(chunks)) // 4 * 4)
        payloads: list[str] = []
        pos = 0
        while pos < len(whole):
            cut = size + 1 + len(payloads) % 3
            payloads.append(whole[pos : pos + cut])
            pos += cut
        return payloads

    def _stream_payloads(self, song: _Song) -> list[str]:
        """The audio events' base64, made once per song and chunking and kept for the next requests (a few
        songs' worth), so that a benchmark's repeated requests measure the client, not this encoder."""
        scenario = self.scenario
        key = (id(song.audio), song.fmt, scenario.chunk_bytes, scenario.huge_line, scenario.base64_mid_quantum)
        hit = _PAYLOAD_CACHE.get(key)
        if hit is not None and hit[0] is song.audio:
            _PAYLOAD_CACHE.move_to_end(key)
            return hit[1]
        audio = streamed_wav(song.audio) if song.fmt == "wav" else song.audio
        payloads = self._payloads(self._chunks(audio))
        _PAYLOAD_CACHE[key] = (song.audio, payloads)
        while len(_PAYLOAD_CACHE) > _AUDIO_CACHE_SIZE:
            _PAYLOAD_CACHE.popitem(last=False)
        return payloads

    def _audio_event(self, index: int, data: str, song: _Song) -> str:
        scenario = self.scenario
        if scenario.malformed_line_at_chunk == index:
            return '{"output": {"audio": {"data": "truncated'
        if scenario.invalid_base64_at_chunk == index:
            data = data[: len(data) // 2] + "*" + data[len(data) // 2 + 1 :]
        expires_at = scenario.expires_at_raw if scenario.expires_at_raw is not None else song.expires_at
        line = (
            f'{{"output":{{"audio":{{"data":"{data}","expires_at":{expires_at},'
            f'"id":"audio_{song.request_id}"}},"finish_reason":"null"}},"request_id":{json.dumps(song.request_id)}}}'
        )
        if scenario.huge_line and index == 0 and len(line) < HUGE_LINE_BYTES:
            line = line[:-1] + " " * (HUGE_LINE_BYTES - len(line)) + "}"  # JSON whitespace: still one valid line
        return line

    async def _stream(self, request: web.Request, song: _Song) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        try:
            return await self._stream_events(request, resp, song)
        except ConnectionResetError:  # the client went away (a timeout, a refused line): nothing to send it
            log.info("simulator request_id=%s: the client closed the stream", song.request_id)
            return resp

    async def _stream_events(self, request: web.Request, resp: web.StreamResponse, song: _Song) -> web.StreamResponse:
        scenario = self.scenario
        chunks = self._stream_payloads(song)
        out = _Coalescer(resp, paced=scenario.chunk_delay_s > 0)
        event_id = 0
        for index in range(len(chunks) + 1):
            if scenario.endless_line and index == 1:
                await out.flush()
                return await self._endless_line(resp)
            if scenario.drop_after_chunks == index:
                await out.flush()
                return self._drop(request, resp)
            if scenario.mid_error is not None and scenario.mid_error_after_chunks == index:
                status, body = self._error_json(scenario.mid_error, song.request_id)
                await out.write(self._block(event_id + 1, "error", status, body))
                await out.flush()
                await resp.write_eof()
                return resp
            if scenario.stall_after_chunks == index:
                await out.flush()
                await asyncio.sleep(scenario.stall_s)
            if index == len(chunks):
                break
            event_id += 1
            await out.write(self._block(event_id, "result", 200, self._audio_event(index, chunks[index], song)))
            if scenario.chunk_delay_s > 0:
                await asyncio.sleep(scenario.chunk_delay_s)
        if not scenario.no_stop:
            final = self._dumps(self._final_body(song))
            await out.write(self._block(event_id + 1, "result", 200, final))
        await out.flush()
        await resp.write_eof()
        return resp

    async def _endless_line(self, resp: web.StreamResponse) -> web.StreamResponse:
        """A ``data:`` line that never ends: up to ENDLESS_LINE_BYTES of it, then nothing more for ``stall_s``
        (what a broken proxy or a hostile server could send). ``endless_line_sent`` counts what got out."""
        piece = b"A" * 65536
        await resp.write(b"id:2\nevent:result\ndata:")
        self.endless_line_sent = 0
        while self.endless_line_sent < ENDLESS_LINE_BYTES:
            await resp.write(piece)
            self.endless_line_sent += len(piece)
        await asyncio.sleep(self.scenario.stall_s)
        return resp

    def _drop(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Close the socket mid-body, as a crashed server or a broken proxy would."""
        log.info("simulator dropping the connection mid-stream")
        transport = request.transport
        if transport is not None:
            transport.abort()
        return resp

    # -------------------------------------------------------------------------------------------- download

    async def _oss(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        target = self.scenario.download_redirect_to
        if target:
            self.downloads.append(request.path)
            raise web.HTTPFound(location=target.replace("{name}", name))
        return await self._serve(request, name)

    async def _mirror(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, request.match_info["name"])

    async def _serve(self, request: web.Request, name: str) -> web.StreamResponse:
        scenario = self.scenario
        self.downloads.append(request.path)
        if scenario.download_delay_s > 0:
            await asyncio.sleep(scenario.download_delay_s)
        song = self._songs.get(name)
        if song is None or scenario.download_status == 404:
            return web.Response(
                status=404, text="<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml"
            )
        if scenario.download_status != 200:
            return web.Response(status=scenario.download_status, text="<Error><Code>Simulated</Code></Error>")
        body = song.audio + b"\0" * scenario.extra_download_bytes
        content_type = "audio/mpeg" if song.fmt == "mp3" else "audio/wav"
        if not scenario.download_chunked:
            return web.Response(body=body, content_type=content_type)
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 65536):
            await resp.write(body[i : i + 65536])
        await resp.write_eof()
        return resp


class _Coalescer:
    """Joins small event blocks into larger socket writes when nothing is paced, so the simulator (and not
    its write loop) is never what a benchmark measures. Event boundaries on the wire are unaffected: TCP
    never kept them anyway."""

    FLUSH_BYTES = 256 * 1024

    def __init__(self, resp: web.StreamResponse, *, paced: bool) -> None:
        self._resp = resp
        self._paced = paced
        self._parts: list[bytes] = []
        self._size = 0

    async def write(self, block: bytes) -> None:
        if self._paced:
            await self._resp.write(block)
            return
        self._parts.append(block)
        self._size += len(block)
        if self._size >= self.FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            await self._resp.write(data)


DEMO_SCENARIO = Scenario(duration_s=15.0, chunk_bytes=16384, chunk_delay_s=0.02)


async def start_simulator_for(settings: Settings) -> tuple[FunMusicSimulator, str, Secret]:
    """Start an in-process simulator for a bot or CLI whose settings say "simulated"; returns (sim, url, key)."""
    key = settings.dashscope_api_key.reveal() if settings.dashscope_api_key else "sim-key"
    sim = FunMusicSimulator(api_key=key, scenario=Scenario(**DEMO_SCENARIO.__dict__))
    base_url = await sim.start()
    log.warning(
        "SIMULATED music: songbot is talking to its built-in Fun-Music simulator at %s, not DashScope. "
        "Songs are test tones, not real music. Set DASHSCOPE_API_KEY (and SONGBOT_SIMULATE=0) for real songs.",
        base_url,
    )
    return sim, base_url, Secret(key)


# --------------------------------------------------------------------------------------------- standalone


@dataclass
class _Args:
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "sim-key"
    scenario: Scenario = field(default_factory=Scenario)


def _parse_args(argv: list[str]) -> _Args:
    parser = argparse.ArgumentParser(prog="python -m services.offline.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--duration", type=float, default=Scenario.duration_s)
    parser.add_argument("--chunk-bytes", type=int, default=Scenario.chunk_bytes)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--huge-line", action="store_true", help="make the first data line over 600 KB")
    ns = parser.parse_args(argv)
    scenario = Scenario(
        duration_s=ns.duration, chunk_bytes=ns.chunk_bytes, chunk_delay_s=ns.chunk_delay, huge_line=ns.huge_line
    )
    return _Args(host=ns.host, port=ns.port, api_key=ns.api_key, scenario=scenario)


async def _serve_forever(args: _Args) -> None:
    sim = FunMusicSimulator(api_key=args.api_key, scenario=args.scenario)
    base_url = await sim.start(args.host, args.port)
    sys.stdout.write(f"{base_url}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await stop.wait()
    finally:
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_forever(_parse_args(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
