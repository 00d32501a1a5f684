"""Fault matrix, DashScope side: the whole bot, started for real, against a simulator that misbehaves.

Each test ends with the member told in words (the deferred message edited, never left "thinking…"), the same
error id in the log, the job's terminal state in the store, and the quota refunded when no song was delivered.
The table of rows is docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.offline.discord_rest import StoredMessage
from services.offline.simulator import Scenario
from tests.support.e2e import (
    Harness,
    assert_refunded,
    error_id_of,
    reservation_state,
    running_bot,
    switch_scenario_at,
    wait_for_job,
)

PROMPT = "a gentle acoustic song about rain on a tin roof"
#: 5–199 words of lyrics make the request non-streaming: the audio then comes from a download url.
SHORT_LYRICS = "[verse]\nRain on the roof tonight,\nsoft and slow and bright,\n[chorus]\nsing along with me\n"


def song(**faults: Any) -> Scenario:
    """A 2 s song from the simulator, with `faults` (Scenario fields) switched on."""
    return Scenario(duration_s=2.0, **faults)


async def failed_song(h: Harness, iid: int, *words: str, requests: int | None = None) -> str:
    """The member's failure message: in words, with an error id that is also in the log and on the job row.
    The job is failed and refunded. Returns the text."""
    final: StoredMessage = await h.wait_final(iid)
    text = final.content
    assert text.startswith("❌ "), text
    for word in words:
        assert word in text, (word, text)
    assert "Traceback" not in text and "Error:" not in text
    error_id = error_id_of(text)
    assert error_id in h.logs.text
    job = await wait_for_job(h)
    job = await h.wait_job_status(job.id, "failed")
    assert job.error_id == error_id
    await assert_refunded(h, job.id)
    assert not final.attachments and not final.components
    if requests is not None:
        assert len(h.sim.requests) == requests, [r["request_id"] for r in h.sim.requests]
    return text


async def delivered_song(h: Harness, iid: int) -> StoredMessage:
    """The finished song on the original response; the job delivered and its quota spent (committed)."""
    final: StoredMessage = await h.wait_final(iid)
    assert [a for a in final.attachments if a.filename.endswith(".mp3")], final.content
    job = await h.wait_job_status((await wait_for_job(h)).id, "delivered")
    assert await reservation_state(h, job.id) == "committed"
    return final


async def lyrics_upload(h: Harness) -> dict[str, object]:
    return {"prompt": "folk", "lyrics_file": h.fake.upload("song.txt", SHORT_LYRICS.encode(), "text/plain")}


# --- refused before the stream -----------------------------------------------------------------------------


async def test_429_then_success_is_retried_and_delivered(tmp_path: Path) -> None:
    scenario = song(pre_error="Throttling", pre_error_times=1)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await delivered_song(h, iid)
        assert len(h.sim.requests) == 2
        assert "Throttling.RateQuota" in h.logs.text


async def test_429_until_retries_run_out_says_busy_try_again_later(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(pre_error="Throttling")) as h:
        iid = await h.song({"prompt": PROMPT})
        text = await failed_song(h, iid, "busy", "try again <t:", requests=3)
        assert ":R>" in text


async def test_500_is_retried_then_reported(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(pre_error="InternalError")) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "internal error", "try again later", requests=3)


@pytest.mark.parametrize("code", ["InvalidApiKey", "AccessDenied", "Arrearage"])
async def test_auth_and_account_errors_tell_the_operator_not_retried(tmp_path: Path, code: str) -> None:
    """401, 403 and an account in arrears are the operator's to fix: one request, no retry, an ERROR log line."""
    async with running_bot(tmp_path, scenario=song(pre_error=code)) as h:
        iid = await h.song({"prompt": PROMPT})
        text = await failed_song(h, iid, "misconfigured", "operator has been told", requests=1)
        error_id = error_id_of(text)
        operator_lines = [line for line in h.logs.lines if line.startswith("ERROR") and error_id in line]
        assert operator_lines and "operator action needed" in operator_lines[0]


async def test_arrearage_as_an_sse_error_block_tells_the_operator(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(pre_error_sse=True)) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "misconfigured", requests=1)


@pytest.mark.parametrize("where", ["before the stream", "mid-stream"])
async def test_moderation_rejection_says_change_the_text(tmp_path: Path, where: str) -> None:
    if where == "before the stream":
        scenario = song(pre_error="DataInspectionFailed")
    else:
        scenario = song(mid_error="DataInspectionFailed", mid_error_after_chunks=1, chunk_bytes=8192)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "moderation rejected", "Change the prompt or lyrics", requests=1)


# --- the connection breaks ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hanging_up_server() -> AsyncIterator[str]:
    """A DashScope that reads the request and hangs up without a byte of answer; yields its base url."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_dropped_before_any_answer(tmp_path: Path) -> None:
    async with hanging_up_server() as base_url, running_bot(tmp_path, DASHSCOPE_BASE_URL=base_url) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "Could not reach the music service")
        assert h.logs.text.count("attempt") >= 3  # retried whole, each attempt logged


async def test_connection_dropped_after_headers_before_the_first_chunk(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(drop_after_chunks=0)) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "try again", requests=3)


async def test_connection_dropped_after_the_first_chunk_is_retried_whole(tmp_path: Path) -> None:
    scenario = song(drop_after_chunks=1, chunk_bytes=8192)
    async with running_bot(tmp_path, scenario=scenario) as h:
        switch_scenario_at(h.sim, 2, song())
        iid = await h.song({"prompt": PROMPT})
        await delivered_song(h, iid)
        assert len(h.sim.requests) == 2
        assert "attempt 1 failed, retrying" in h.logs.text


async def test_connection_dropped_after_the_first_chunk_every_time(tmp_path: Path) -> None:
    scenario = song(drop_after_chunks=1, chunk_bytes=8192)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "stopped sending the song part-way", requests=3)


async def test_stall_longer_than_the_idle_timeout_took_too_long(tmp_path: Path) -> None:
    scenario = song(stall_after_chunks=1, stall_s=5.0, chunk_bytes=8192)
    async with running_bot(tmp_path, scenario=scenario, SONGBOT_IDLE_TIMEOUT="0.5", SONGBOT_MAX_RETRIES="1") as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "took too long", requests=2)


# --- the stream is broken ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"malformed_line_at_chunk": 1},
        {"invalid_base64_at_chunk": 1},
        {"no_stop": True},
    ],
    ids=["malformed-sse-line", "invalid-base64", "no-stop"],
)
async def test_broken_stream_is_retried_then_reported(tmp_path: Path, fault: dict[str, object]) -> None:
    scenario = song(chunk_bytes=8192, **fault)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await failed_song(h, iid, "stopped sending the song part-way", "try again", requests=3)


async def test_broken_stream_once_then_a_clean_retry_delivers(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(invalid_base64_at_chunk=1, chunk_bytes=8192)) as h:
        switch_scenario_at(h.sim, 2, song())
        iid = await h.song({"prompt": PROMPT})
        await delivered_song(h, iid)
        assert len(h.sim.requests) == 2


async def test_final_event_without_lyrics_or_url_still_delivers(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(omit_lyrics=True, omit_url=True)) as h:
        iid = await h.song({"prompt": PROMPT})
        final = await delivered_song(h, iid)
        names = [a.filename for a in final.attachments]
        assert "lyrics.txt" not in names and any(n.endswith(".mp3") for n in names)


async def test_huge_data_line_is_read_and_delivered(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(huge_line=True)) as h:
        iid = await h.song({"prompt": PROMPT})
        await delivered_song(h, iid)
        assert len(h.sim.requests) == 1


# --- non-streaming: the audio comes from a url ---------------------------------------------------------------


async def test_non_streaming_download_timing_out(tmp_path: Path) -> None:
    scenario = song(download_delay_s=5.0)
    async with running_bot(tmp_path, scenario=scenario, SONGBOT_IDLE_TIMEOUT="0.5", SONGBOT_MAX_RETRIES="1") as h:
        iid = await h.song(await lyrics_upload(h))
        await failed_song(h, iid, "could not be downloaded", requests=1)
        assert h.sim.requests[0]["sse"] is False
        assert len(h.sim.downloads) == 2  # the download is retried; the paid-for song is not requested again


async def test_non_streaming_download_answering_404(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=song(download_status=404)) as h:
        iid = await h.song(await lyrics_upload(h))
        await failed_song(h, iid, "could not be downloaded", requests=1)
        assert h.sim.requests[0]["sse"] is False and len(h.sim.downloads) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_non_streaming_download_over_the_cap(tmp_path: Path, chunked: bool) -> None:
    scenario = song(download_chunked=chunked)
    async with running_bot(tmp_path, scenario=scenario, SONGBOT_DOWNLOAD_MAX_BYTES="4096") as h:
        iid = await h.song(await lyrics_upload(h))
        await failed_song(h, iid, "could not be downloaded", requests=1)
        assert "4096-byte limit" in h.logs.text


async def test_non_streaming_download_delivers(tmp_path: Path) -> None:
    """The control for the three above: the same request with a well-behaved url delivers."""
    async with running_bot(tmp_path, scenario=song()) as h:
        iid = await h.song(await lyrics_upload(h))
        final = await delivered_song(h, iid)
        assert h.sim.requests[0]["sse"] is False and len(h.sim.downloads) == 1
        assert "Rain on the roof" in final.attachment("lyrics.txt").data.decode()
