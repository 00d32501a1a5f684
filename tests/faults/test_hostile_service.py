"""What DashScope (or something between it and us) may send that must not cost a paid song, nor unbounded memory:
base64 cut mid-quantum, bookkeeping fields out of range, a line that never ends, a song too long to process.

Through real sockets against the simulator, down to the job row in a real store where the field ends up there.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from services.audio_headers import find_data_chunk
from services.errors import BrokenStream, ConfigError, SongTooLong
from services.funmusic.client import FunMusicClient
from services.funmusic.request import GenerationRequest
from services.funmusic.sink import AudioSink, Reporter, WriteBehind
from services.funmusic.sse import EventTooLarge, SSEParser
from services.offline.simulator import ENDLESS_LINE_BYTES, Scenario, cached_audio
from services.settings import load_settings
from services.store import JobStatus, Store
from tests.support.e2e import running_bot, wait_for_job
from tests.support.sim_fixtures import SIM_KEY, make_client, running_simulator

Session = aiohttp.ClientSession
PROMPT = "a slow ballad about a lighthouse keeper and the winter sea"
EXPIRES_S = 1_774_937_185


def prompt(fmt: str = "mp3") -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, format=fmt)  # type: ignore[arg-type]


async def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in await asyncio.to_thread(lambda: list(path.iterdir())))


# --- base64 cut mid-quantum -------------------------------------------------------------------------------------


async def test_the_simulator_can_cut_base64_mid_quantum(http_session: Session) -> None:
    async with running_simulator(Scenario(duration_s=2.0, chunk_bytes=4000, base64_mid_quantum=True)) as sim:
        headers = {"Authorization": f"Bearer {SIM_KEY}", "X-DashScope-SSE": "enable"}
        body = {"model": "fun-music-v1", "input": {"prompt": PROMPT, "format": "mp3"}}
        async with http_session.post(
            f"{sim.base_url}/services/audio/music/generation", json=body, headers=headers
        ) as r:
            raw = await r.read()
    parser = SSEParser()
    events = [json.loads(e.data) for e in parser.feed(raw) + parser.close()]
    payloads = [e["output"]["audio"]["data"] for e in events[:-1]]
    assert len(payloads) > 3 and all(len(p) % 4 for p in payloads[:-1])  # every cut is inside a quantum
    assert {len(p) % 4 for p in payloads[:-1]} == {1, 2, 3}
    with pytest.raises(ValueError):
        base64.b64decode(payloads[0], validate=True)  # what decoding each event on its own used to do
    assert base64.b64decode("".join(payloads), validate=True) == await cached_audio(2.0, 48000, 2, "mp3")


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_base64_cut_mid_quantum_makes_one_request_and_the_whole_song(
    http_session: Session, tmp_path: Path, fmt: str
) -> None:
    async with running_simulator(Scenario(duration_s=3.0, chunk_bytes=5000, base64_mid_quantum=True)) as sim:
        result = await make_client(http_session, sim).generate(prompt(fmt), out_dir=tmp_path)
        assert len(sim.requests) == 1  # not failed, not retried (and billed) again
    sent = await cached_audio(3.0, 48000, 2, fmt)
    got = await asyncio.to_thread(result.audio_path.read_bytes)
    if fmt == "mp3":
        assert got == sent
    else:  # the streamed WAV's placeholder sizes were repaired: the samples are the ones sent, all of them
        got_at, sent_at = find_data_chunk(got[:4096]), find_data_chunk(sent[:4096])
        assert got_at is not None and sent_at is not None
        assert got[got_at + 8 :] == sent[sent_at + 8 :]
    assert abs(result.duration_s - 3.0) < 0.1


async def test_base64_cut_mid_quantum_still_refuses_invalid_characters(http_session: Session, tmp_path: Path) -> None:
    scenario = Scenario(duration_s=2.0, chunk_bytes=5000, base64_mid_quantum=True, invalid_base64_at_chunk=2)
    async with running_simulator(scenario) as sim:
        with pytest.raises(BrokenStream, match="invalid base64"):
            await make_client(http_session, sim, max_retries=0).generate(prompt(), out_dir=tmp_path)
    assert await files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("payloads", "expected"),
    [
        (["YWJj", "ZA"], b"abcd"),  # the last quantum without its "==" padding
        (["YW", "Jj", "ZGVm"], b"abcdef"),
        (["YWJjZA=="], b"abcd"),
        (["YWJjZ"], None),  # one character into a quantum: no base64 ends like that
    ],
)
async def test_a_carried_remainder_at_the_end_of_the_stream(
    tmp_path: Path, payloads: list[str], expected: bytes | None
) -> None:
    sink = AudioSink(tmp_path / "song.part", "mp3")
    await sink.start()
    writer = WriteBehind(sink, Reporter(None, "test"))
    await writer.submit(payloads, "req-1")
    if expected is None:
        with pytest.raises(BrokenStream, match="one character into"):
            await writer.drain()
        await writer.abandon()
    else:
        await writer.drain()
        await asyncio.to_thread(sink.close)
        assert await asyncio.to_thread(sink.path.read_bytes) == expected
    await sink.dispose()


# --- bookkeeping fields -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (str(EXPIRES_S * 1000), EXPIRES_S),  # milliseconds
        ("1e999", None),  # infinite once parsed
        ("Infinity", None),
        ("NaN", None),
        ("-5", None),
        ('"tomorrow"', None),
        ("9" * 5000, None),  # more digits than int() takes
    ],
)
async def test_odd_expires_at_never_fails_the_song(
    http_session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: str, expected: int | None
) -> None:
    async with running_simulator(Scenario(duration_s=2.0, expires_at_raw=raw, billed_raw=raw)) as sim:
        with caplog.at_level(logging.WARNING):
            result = await make_client(http_session, sim).generate(prompt(), out_dir=tmp_path)
        assert len(sim.requests) == 1
    assert result.url_expires_at == expected
    assert result.billed_seconds is None  # none of these is a believable number of billed seconds
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("expires_at" in w for w in warnings) and any("usage.duration" in w for w in warnings), warnings
    assert all(len(w) < 400 for w in warnings)  # a huge value is not copied into the log


async def test_a_request_id_longer_than_its_column_is_cut(
    http_session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_id = "req-" + "x" * 296
    async with running_simulator(Scenario(duration_s=2.0, request_id=long_id)) as sim:
        with caplog.at_level(logging.WARNING):
            result = await make_client(http_session, sim).generate(prompt(), out_dir=tmp_path)
    assert result.request_id == long_id[:100]
    assert any("300-character request_id" in r.getMessage() for r in caplog.records)


async def test_odd_bookkeeping_reaches_the_job_row_normalised(tmp_path: Path) -> None:
    """expires_at in milliseconds, billed seconds of 1e999, a 300-character request id: the paid song is delivered
    and its row says when the url really expires."""
    scenario = Scenario(duration_s=3.0, expires_at_raw=str(EXPIRES_S * 1000), billed_raw="1e999", request_id="r" * 300)
    async with running_bot(tmp_path, scenario=scenario) as h:
        final = await h.wait_final(await h.song({"prompt": PROMPT}))
        assert final.attachments, final.content
        job = await h.wait_job_status((await wait_for_job(h)).id, "delivered")
        assert job.url_expires_at == datetime.fromtimestamp(EXPIRES_S, UTC)
        assert job.request_id == "r" * 100
        assert job.duration_s == pytest.approx(3.0, abs=0.1)
        assert "looks like milliseconds" in h.logs.text and "usage.duration" in h.logs.text
        assert len(h.sim.requests) == 1


async def test_an_error_code_longer_than_its_column_is_recorded(tmp_path: Path) -> None:
    scenario = Scenario(duration_s=3.0, pre_error="InternalError", error_code="InternalError." + "y" * 300)
    async with running_bot(tmp_path, scenario=scenario) as h:
        final = await h.wait_final(await h.song({"prompt": PROMPT}))
        assert final.content.startswith("❌")
        job = await h.wait_job_status((await wait_for_job(h)).id, "failed")
        assert job.error_code == ("InternalError." + "y" * 300)[:100]


async def test_the_store_cuts_text_longer_than_its_column(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """On PostgreSQL a longer value would fail the write (SQLite does not check): the row keeps its state."""
    job_id = await store.create_job(guild_id=1, channel_id=2, user_id=3, prompt="p", lyrics=None, options={})
    with caplog.at_level(logging.WARNING):
        job = await store.transition(job_id, JobStatus.GENERATING, request_id="q" * 500)
        job = await store.transition(job_id, JobStatus.FAILED, error_code="E" * 500, error_id="ab12cd34")
    assert (job.status, job.request_id, job.error_code) == (JobStatus.FAILED, "q" * 100, "E" * 100)
    assert sum("over its column" in r.getMessage() for r in caplog.records) == 2


# --- a line that never ends ---------------------------------------------------------------------------------------


def test_the_parser_refuses_a_line_past_the_event_cap() -> None:
    parser = SSEParser(max_event_bytes=1000)
    assert parser.feed(b"event:result\ndata:" + b"A" * 900) == []
    with pytest.raises(EventTooLarge, match="1000-byte event size cap"):
        parser.feed(b"A" * 200)
    parser = SSEParser(max_event_bytes=1000)  # many short data lines in one event count together
    with pytest.raises(EventTooLarge):
        parser.feed(b"data:" + b"A" * 400 + b"\ndata:" + b"A" * 400 + b"\ndata:" + b"A" * 400 + b"\n")
    parser = SSEParser(max_event_bytes=1000)  # the count starts again with each event
    for _ in range(5):
        assert len(parser.feed(b"data:" + b"A" * 900 + b"\n\n")) == 1


async def test_a_line_that_never_ends_fails_the_stream_at_the_cap(http_session: Session, tmp_path: Path) -> None:
    cap = 4 * 1024 * 1024
    async with running_simulator(Scenario(duration_s=2.0, endless_line=True, stall_s=30.0)) as sim:
        client = make_client(http_session, sim, max_event_bytes=cap, max_retries=0, idle_timeout_s=30.0)
        with pytest.raises(BrokenStream, match="event size cap") as caught:
            await client.generate(prompt(), out_dir=tmp_path)
        assert caught.value.retryable and caught.value.request_id == sim.requests[-1]["request_id"]
        # the client stopped reading at the cap: the simulator could not send the rest of its endless line
        assert sim.endless_line_sent < ENDLESS_LINE_BYTES
    assert await files_in(tmp_path) == []


# --- a song too long to process -------------------------------------------------------------------------------------


async def test_a_song_over_the_duration_cap_is_refused_before_processing(http_session: Session, tmp_path: Path) -> None:
    async with running_simulator(Scenario(duration_s=3.0)) as sim:
        with pytest.raises(SongTooLong) as caught:
            await make_client(http_session, sim, max_song_seconds=2).generate(prompt(), out_dir=tmp_path)
        assert len(sim.requests) == 1
    assert caught.value.duration_s == pytest.approx(3.0, abs=0.1) and caught.value.limit_s == 2
    assert await files_in(tmp_path) == []


async def test_the_member_is_told_the_song_is_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[Path] = []
    from services import audio

    original = audio._decode

    def spy(src: Path, fmt: str) -> object:
        decoded.append(src)
        return original(src, fmt)

    monkeypatch.setattr(audio, "_decode", spy)
    async with running_bot(tmp_path, scenario=Scenario(duration_s=3.0), SONGBOT_MAX_SONG_SECONDS="2") as h:
        final = await h.wait_final(await h.song({"prompt": PROMPT, "format": "ogg"}))
        assert final.content.startswith("❌") and not final.attachments
        assert "0:03 long, over this bot's limit of 0:02" in final.content, final.content
        job = await h.wait_job_status((await wait_for_job(h)).id, "failed")
        assert job.error_code == "SongTooLong"
    assert decoded == []  # pydub never held it in memory


def test_the_duration_cap_setting() -> None:
    base = {"DISCORD_TOKEN": "t"}
    assert load_settings(base).max_song_seconds == 900
    assert load_settings({**base, "SONGBOT_MAX_SONG_SECONDS": "1200"}).max_song_seconds == 1200
    for bad in ("0", "fifteen minutes", "100000"):
        with pytest.raises(ConfigError, match="SONGBOT_MAX_SONG_SECONDS"):
            load_settings({**base, "SONGBOT_MAX_SONG_SECONDS": bad})


async def test_the_client_takes_the_duration_cap_from_the_settings(http_session: Session) -> None:
    settings = load_settings({"DISCORD_TOKEN": "t", "DASHSCOPE_API_KEY": SIM_KEY, "SONGBOT_MAX_SONG_SECONDS": "60"})
    assert FunMusicClient.from_settings(http_session, settings).max_song_seconds == 60
