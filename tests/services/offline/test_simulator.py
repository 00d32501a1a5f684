"""The simulator speaks DashScope's wire format exactly (``docs/dashscope.md``), byte for byte where it matters."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
from typing import Any

import aiohttp
import pytest

from services.funmusic.sse import SSEEvent, SSEParser
from services.offline.simulator import (
    FunMusicSimulator,
    Scenario,
    cached_audio,
    lyrics_for,
    start_simulator_for,
    streamed_wav,
)
from services.settings import load_settings
from tests.support.sim_fixtures import SIM_KEY

AUTH = {"Authorization": f"Bearer {SIM_KEY}"}
SSE = {**AUTH, "X-DashScope-SSE": "enable"}
BODY: dict[str, Any] = {
    "model": "fun-music-v1",
    "input": {"prompt": "a calm piano ballad about the sea", "format": "wav"},
}


async def post(
    session: aiohttp.ClientSession, sim: FunMusicSimulator, body: object, headers: dict[str, str]
) -> tuple[int, str, bytes]:
    async with session.post(f"{sim.base_url}/services/audio/music/generation", json=body, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


def events_of(raw: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    return parser.feed(raw) + parser.close()


async def test_stream_is_exactly_the_documented_blocks(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession
) -> None:
    simulator.scenario = Scenario(chunk_bytes=100_000)
    status, ctype, raw = await post(http_session, simulator, BODY, SSE)
    assert (status, ctype) == (200, "text/event-stream")
    assert b"\r" not in raw and b"[DONE]" not in raw
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""  # ends with a blank line, then the connection closes
    first = blocks[0].split("\n")
    assert first[:3] == ["id:1", "event:result", ":HTTP_STATUS/200"] and first[3].startswith('data:{"output":')
    events = events_of(raw)
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    bodies = [json.loads(e.data) for e in events]
    for b in bodies[:-1]:
        assert b["output"]["finish_reason"] == "null" and "url" not in b["output"]["audio"] and "usage" not in b
    final = bodies[-1]
    assert final["output"]["finish_reason"] == "stop" and final["output"]["audio"]["data"] == ""
    assert final["output"]["extra_info"]["sample_rate"] == "48000" and final["output"]["extra_info"]["channels"] == 2
    assert final["usage"] == {"duration": 4}
    assert {b["request_id"] for b in bodies} == {simulator.requests[-1]["request_id"]}
    expires_at = final["output"]["audio"]["expires_at"]
    assert abs(expires_at - (time.time() + 86400)) < 60
    audio = b"".join(base64.b64decode(b["output"]["audio"]["data"], validate=True) for b in bodies[:-1])
    assert audio == streamed_wav(await cached_audio(4.0, 48000, 2, "wav"))
    assert audio[4:8] == b"\xff\xff\xff\xff"  # a streaming server cannot know the size yet


async def test_crlf_and_space_after_colon(simulator: FunMusicSimulator, http_session: aiohttp.ClientSession) -> None:
    simulator.scenario = Scenario(crlf=True, space_after_colon=True)
    _, _, raw = await post(http_session, simulator, BODY, SSE)
    assert raw.startswith(b"id: 1\r\nevent: result\r\n:HTTP_STATUS/200\r\ndata: {")
    assert raw.endswith(b"}\r\n\r\n")


async def test_non_streaming_body_and_its_url(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession
) -> None:
    simulator.scenario = Scenario(int_sample_rate=True)
    status, ctype, raw = await post(http_session, simulator, {**BODY, "parameters": {}}, AUTH)
    assert (status, ctype) == (200, "application/json")
    body = json.loads(raw)
    audio = body["output"]["audio"]
    assert audio["data"] == "" and audio["id"].startswith("audio_")
    assert audio["url"].startswith(f"{simulator.root_url}/oss/fun-music/") and "Expires=" in audio["url"]
    assert body["output"]["extra_info"]["sample_rate"] == 48000
    assert body["output"]["extra_info"]["lyrics"].startswith("[verse]\n")
    async with http_session.get(audio["url"]) as resp:
        assert resp.status == 200 and resp.content_type == "audio/wav"
        assert await resp.read() == await cached_audio(4.0, 48000, 2, "wav")
    assert simulator.requests[-1]["sse"] is False and simulator.requests[-1]["body"]["parameters"] == {}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (BODY, {}, 401, "InvalidApiKey"),
        (BODY, {"Authorization": "Bearer nope"}, 401, "InvalidApiKey"),
        ({"model": "fun-music-v2", "input": {"prompt": "x"}}, AUTH, 400, "InvalidParameter"),
        ({"model": "fun-music-v1"}, AUTH, 400, "InvalidParameter"),
        ({"model": "fun-music-v1", "input": {"format": "mp3"}}, AUTH, 400, "InvalidParameter"),
        ({"model": "fun-music-preview", "input": {"lyrics": "[verse] la la la"}}, AUTH, 400, "InvalidParameter"),
        ({"model": "fun-music-v1", "input": {"prompt": "x", "format": "ogg"}}, AUTH, 400, "InvalidParameter"),
        ("not an object", AUTH, 400, "InvalidParameter"),
    ],
)
async def test_refusals_use_dashscope_error_json(
    simulator: FunMusicSimulator,
    http_session: aiohttp.ClientSession,
    body: object,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    got_status, ctype, raw = await post(http_session, simulator, body, headers)
    error = json.loads(raw)
    assert (got_status, ctype, error["code"]) == (status, "application/json", code)
    assert error["message"] and error["request_id"] == simulator.requests[-1]["request_id"]
    assert "nope" not in json.dumps(simulator.requests)  # no header values are recorded


async def test_pre_error_times_counts_per_scenario(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession
) -> None:
    simulator.scenario = Scenario(pre_error="Throttling", pre_error_times=2, retry_after="1")
    statuses = [(await post(http_session, simulator, BODY, AUTH))[0] for _ in range(3)]
    assert statuses == [429, 429, 200]
    simulator.scenario = Scenario(pre_error="InternalError", pre_error_times=1)  # a new scenario counts anew
    statuses = [(await post(http_session, simulator, BODY, AUTH))[0] for _ in range(2)]
    assert statuses == [500, 200]


async def test_pre_error_as_sse_block(simulator: FunMusicSimulator, http_session: aiohttp.ClientSession) -> None:
    simulator.scenario = Scenario(pre_error_sse=True)
    status, ctype, raw = await post(http_session, simulator, BODY, SSE)
    assert (status, ctype) == (400, "text/event-stream")
    (event,) = events_of(raw)
    assert (event.event, event.http_status, json.loads(event.data)["code"]) == ("error", 400, "Arrearage")


async def test_mid_stream_error_block_ends_the_stream(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession
) -> None:
    simulator.scenario = Scenario(mid_error="Throttling", mid_error_after_chunks=2)
    status, _, raw = await post(http_session, simulator, BODY, SSE)
    events = events_of(raw)
    assert status == 200 and len(events) == 3
    last = events[-1]
    assert (last.id, last.event, last.http_status) == ("3", "error", 429)
    assert json.loads(last.data)["code"] == "Throttling.RateQuota"
    assert raw.decode().split("\n\n")[-2].startswith("id:3\nevent:error\n:HTTP_STATUS/429\ndata:{")


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        (Scenario(no_stop=True), "no-stop"),
        (Scenario(invalid_base64_at_chunk=0), "base64"),
        (Scenario(malformed_line_at_chunk=0), "json"),
        (Scenario(huge_line=True, duration_s=1.0), "huge"),
        (Scenario(omit_lyrics=True, omit_url=True), "omit"),
    ],
)
async def test_stream_fault_knobs(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession, scenario: Scenario, check: str
) -> None:
    simulator.scenario = scenario
    _, _, raw = await post(http_session, simulator, {**BODY, "input": {**BODY["input"], "format": "mp3"}}, SSE)
    events = events_of(raw)
    if check == "no-stop":
        assert all(json.loads(e.data)["output"]["finish_reason"] == "null" for e in events)
    elif check == "base64":
        with pytest.raises(ValueError):
            base64.b64decode(json.loads(events[0].data)["output"]["audio"]["data"], validate=True)
    elif check == "json":
        with pytest.raises(ValueError):
            json.loads(events[0].data)
    elif check == "huge":
        assert len(events[0].data) > 600_000 and json.loads(events[0].data)["output"]["finish_reason"] == "null"
    else:
        final = json.loads(events[-1].data)["output"]
        assert "url" not in final["audio"] and "lyrics" not in final["extra_info"]


async def test_json_answer_to_sse_request(simulator: FunMusicSimulator, http_session: aiohttp.ClientSession) -> None:
    simulator.scenario = Scenario(json_response_to_sse=True)
    status, ctype, raw = await post(http_session, simulator, BODY, SSE)
    assert (status, ctype) == (200, "application/json") and json.loads(raw)["output"]["finish_reason"] == "stop"


async def test_watermark_makes_the_song_longer(
    simulator: FunMusicSimulator, http_session: aiohttp.ClientSession
) -> None:
    body = {"model": "fun-music-v1", "input": {"prompt": "x", "format": "mp3", "enable_aigc_watermark": True}}
    _, _, raw = await post(http_session, simulator, body, AUTH)
    assert json.loads(raw)["usage"]["duration"] == 5


async def test_download_knobs(simulator: FunMusicSimulator, http_session: aiohttp.ClientSession) -> None:
    _, _, raw = await post(http_session, simulator, BODY, AUTH)
    url = json.loads(raw)["output"]["audio"]["url"]
    simulator.scenario = Scenario(download_status=503)
    async with http_session.get(url) as resp:
        assert resp.status == 503
    simulator.scenario = Scenario(extra_download_bytes=10, download_chunked=True)
    async with http_session.get(url) as resp:
        assert (
            resp.content_length is None and len(await resp.read()) == len(await cached_audio(4, 48000, 2, "wav")) + 10
        )
    simulator.scenario = Scenario(download_redirect_to="http://elsewhere.example/{name}")
    async with http_session.get(url, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith("http://elsewhere.example/")
    simulator.scenario = Scenario(download_host="cdn.example.net")
    assert simulator.download_host == "cdn.example.net"
    _, _, raw = await post(http_session, simulator, BODY, AUTH)
    assert json.loads(raw)["output"]["audio"]["url"].startswith("http://cdn.example.net:")
    async with http_session.get(f"{simulator.root_url}/oss/fun-music/20260101/unknown.wav") as resp:
        assert resp.status == 404


def test_lyrics() -> None:
    assert lyrics_for({"prompt": "rainy night in the city with soft jazz"}).startswith("[verse]\nRainy night in")
    assert lyrics_for({"lyrics": " [verse]\nmine \n", "prompt": "x"}) == "[verse]\nmine"
    assert lyrics_for({"prompt": "x", "is_instrumental": True}) == ""


async def test_start_simulator_for_settings_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    settings = load_settings({"SONGBOT_SIMULATE": "1"}, require_discord=False)
    sim, base_url, key = await start_simulator_for(settings)
    try:
        assert base_url == sim.base_url and key.reveal() == "sim-key"
        assert "SIMULATED" in caplog.text and "not DashScope" in caplog.text
    finally:
        await sim.close()


async def test_runs_standalone_as_a_module(http_session: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.offline.simulator",
        "--duration",
        "1",
        "--api-key",
        SIM_KEY,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        base_url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        async with http_session.post(f"{base_url}/services/audio/music/generation", json=BODY, headers=AUTH) as resp:
            body: dict[str, Any] = await resp.json()
        assert body["usage"]["duration"] == 1
    finally:
        proc.terminate()
        assert await proc.wait() == 0
