"""FunMusicClient against the simulator over real sockets: both modes, both formats, every fault."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import struct
from pathlib import Path

import aiohttp
import psutil
import pytest

from cogs._words import failure_text
from services.audio_headers import find_data_chunk
from services.errors import (
    AuthError,
    BrokenStream,
    ConfigError,
    ConnectionFailed,
    DownloadError,
    ErrorBody,
    InvalidInput,
    ModerationError,
    ParameterError,
    ServerError,
    ServiceError,
    ServiceTimeout,
    ThrottledError,
)
from services.ffmpeg import (
    AudioInfo,
    DecodeCheck,
    FfmpegError,
    parse_decode_log,
    probe_audio,
    render_test_audio,
    run_ffmpeg,
)
from services.funmusic.client import FunMusicClient
from services.funmusic.errors_map import classify, parse_retry_after
from services.funmusic.limiter import RateLimiter
from services.funmusic.request import MODEL_PREVIEW, GenerationRequest, Mode, Progress
from services.funmusic.sink import AudioSink
from services.funmusic.wire import parse_event_json
from services.offline import simulator as simulator_module
from services.offline.simulator import FunMusicSimulator, Scenario
from services.settings import Secret, load_settings
from tests.support.sim_fixtures import SIM_KEY, make_client, running_simulator

PROMPT = "an upbeat summer folk song with acoustic guitar and harmonica"
SHORT_LYRICS = "[verse]\nSun on the bay"  # 20-odd characters: only the non-streaming mode takes it
Session = aiohttp.ClientSession


def prompt(fmt: str = "mp3", **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, format=fmt, **kw)  # type: ignore[arg-type]


async def ffmpeg_children() -> list[psutil.Process]:
    return await asyncio.to_thread(lambda: [p for p in psutil.Process().children() if "ffmpeg" in p.name()])


async def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in await asyncio.to_thread(lambda: list(path.iterdir())))


async def fail(client: FunMusicClient, tmp_path: Path, request: GenerationRequest | None = None) -> ServiceError:
    """Run a generation that must fail; check it left nothing behind, and return the error."""
    with pytest.raises(ServiceError) as info:
        await client.generate(request or prompt(), out_dir=tmp_path)
    assert await files_in(tmp_path) == []
    return info.value


# ----------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_streaming_song_is_complete_and_decodes(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path, fmt: str
) -> None:
    seen: list[Progress] = []

    async def on_progress(p: Progress) -> None:
        seen.append(p)

    result = await client.generate(prompt(fmt), out_dir=tmp_path, on_progress=on_progress)

    info = await probe_audio(result.audio_path)
    assert abs(info.duration_s - simulator.scenario.duration_s) < 0.1
    assert (info.channels, info.sample_rate) == (2, 48000)
    assert (result.duration_s, result.channels, result.sample_rate) == (info.duration_s, 2, 48000)
    assert result.mode is Mode.STREAMING and result.format == fmt
    assert result.audio_path.parent == tmp_path and result.audio_path.suffix == f".{fmt}"
    assert await files_in(tmp_path) == [result.audio_path.name]
    sent = simulator.requests[-1]
    assert sent["sse"] is True
    assert sent["body"]["input"]["prompt"] == PROMPT and sent["body"]["input"]["format"] == fmt
    assert result.request_id == sent["request_id"]
    assert result.lyrics.startswith("[verse]") and "harmonica" in result.lyrics
    assert result.url and result.url.startswith(simulator.root_url + "/oss/fun-music/")
    assert result.url_expires_at and result.url_expires_at > 1_700_000_000
    assert result.billed_seconds == 4
    assert result.audio_bytes == (await asyncio.to_thread(result.audio_path.stat)).st_size
    assert seen[0].stage == "connecting"
    generating = [p for p in seen if p.stage == "generating"]
    assert generating and generating[-1].bytes_received == result.audio_bytes
    assert [p.bytes_received for p in generating] == sorted(p.bytes_received for p in generating)
    assert abs(generating[-1].seconds_received - info.duration_s) < 0.2


async def test_streamed_wav_placeholder_sizes_are_repaired(client: FunMusicClient, tmp_path: Path) -> None:
    result = await client.generate(prompt("wav"), out_dir=tmp_path)
    head = await asyncio.to_thread(lambda: result.audio_path.read_bytes()[:4096])
    data_at = find_data_chunk(head)
    assert data_at is not None
    riff_size, data_size = struct.unpack_from("<I", head, 4)[0], struct.unpack_from("<I", head, data_at + 4)[0]
    assert riff_size == result.audio_bytes - 8
    assert data_size == result.audio_bytes - data_at - 8


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_short_lyrics_go_non_streaming_and_download(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path, fmt: str
) -> None:
    stages: list[str] = []

    async def on_progress(p: Progress) -> None:
        stages.append(p.stage)

    result = await client.generate(
        GenerationRequest(lyrics=SHORT_LYRICS, format=fmt), out_dir=tmp_path, on_progress=on_progress
    )
    assert result.mode is Mode.NON_STREAMING
    assert simulator.requests[-1]["sse"] is False
    assert len(simulator.downloads) == 1
    assert result.lyrics == SHORT_LYRICS
    info = await probe_audio(result.audio_path)
    assert abs(info.duration_s - 4.0) < 0.1 and info.channels == 2 and info.sample_rate == 48000
    assert "downloading" in stages
    assert await files_in(tmp_path) == [result.audio_path.name]


async def test_mono_44k1(http_session: Session, tmp_path: Path) -> None:
    from tests.support.sim_fixtures import running_simulator

    async with running_simulator(Scenario(duration_s=2.0, sample_rate=44100, channels=1)) as sim:
        result = await make_client(http_session, sim).generate(prompt("wav"), out_dir=tmp_path)
    assert (result.channels, result.sample_rate) == (1, 44100)
    assert abs(result.duration_s - 2.0) < 0.1


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(crlf=True),
        Scenario(space_after_colon=True, crlf=True),
        Scenario(huge_line=True),
        Scenario(int_sample_rate=True),
        Scenario(chunk_bytes=1001),  # base64 quanta and lines split across reads everywhere
        Scenario(json_response_to_sse=True),
        Scenario(stall_after_chunks=1, stall_s=0.2),  # a pause shorter than the idle timeout is fine
    ],
    ids=["crlf", "space-crlf", "huge-line", "int-rate", "odd-chunks", "json-to-sse", "short-stall"],
)
@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_tolerated_variations(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path, scenario: Scenario, fmt: str
) -> None:
    simulator.scenario = scenario
    result = await client.generate(prompt(fmt), out_dir=tmp_path)
    assert abs(result.duration_s - 4.0) < 0.1
    assert result.extra["service_sample_rate"] == 48000
    assert len(simulator.requests) == 1


async def test_huge_line_is_really_over_600_kb(simulator: FunMusicSimulator, http_session: Session) -> None:
    simulator.scenario = Scenario(huge_line=True)
    async with http_session.post(
        simulator.base_url + "/services/audio/music/generation",
        json=prompt("mp3").body(),
        headers={"Authorization": f"Bearer {SIM_KEY}", "X-DashScope-SSE": "enable"},
    ) as resp:
        body = await resp.read()
    assert max(len(line) for line in body.split(b"\n")) > 600_000


async def test_missing_lyrics_and_url_still_give_the_paid_song(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(omit_lyrics=True, omit_url=True)
    result = await client.generate(prompt(), out_dir=tmp_path)
    assert result.lyrics == "" and result.url is None
    assert abs(result.duration_s - 4.0) < 0.1


async def test_preview_model_sends_no_gender(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    await client.generate(prompt(model=MODEL_PREVIEW), out_dir=tmp_path)
    sent = simulator.requests[-1]["body"]
    assert sent["model"] == MODEL_PREVIEW and "gender" not in sent["input"]


async def test_invalid_input_makes_no_request(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput):
        await client.generate(GenerationRequest(prompt="   "), out_dir=tmp_path)
    assert simulator.requests == []


# ----------------------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize(
    ("name", "cls", "code", "status", "requests"),
    [
        ("InvalidApiKey", AuthError, "InvalidApiKey", 401, 1),
        ("AccessDenied", AuthError, "AccessDenied", 403, 1),
        ("Arrearage", AuthError, "Arrearage", 400, 1),
        ("DataInspectionFailed", ModerationError, "DataInspectionFailed", 400, 1),
        ("Throttling", ThrottledError, "Throttling.RateQuota", 429, 3),
        ("InternalError", ServerError, "InternalError", 500, 3),
    ],
)
async def test_pre_stream_errors_are_classified_and_retried_only_when_sensible(
    client: FunMusicClient,
    simulator: FunMusicSimulator,
    tmp_path: Path,
    name: str,
    cls: type[ServiceError],
    code: str,
    status: int,
    requests: int,
) -> None:
    simulator.scenario = Scenario(pre_error=name)
    err = await fail(client, tmp_path)
    assert type(err) is cls
    assert (err.code, err.status) == (code, status)
    assert err.request_id == simulator.requests[-1]["request_id"]
    assert len(simulator.requests) == requests  # max_retries=2 in the fixture
    assert not err.audio_delivered


async def test_arrearage_as_sse_error_body(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(pre_error_sse=True)
    err = await fail(client, tmp_path)
    assert isinstance(err, AuthError)
    assert (err.code, err.status, err.request_id) == ("Arrearage", 400, simulator.requests[-1]["request_id"])
    assert len(simulator.requests) == 1


async def test_wrong_key_is_an_auth_error_and_not_retried(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    wrong = make_client(http_session, simulator, api_key=Secret("sk-wrong-key-42"))
    err = await fail(wrong, tmp_path)
    assert isinstance(err, AuthError) and err.code == "InvalidApiKey" and err.status == 401
    assert len(simulator.requests) == 1


async def test_throttled_once_then_success(http_session: Session, simulator: FunMusicSimulator, tmp_path: Path) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    stages: list[str] = []

    async def on_progress(p: Progress) -> None:
        stages.append(p.stage)

    simulator.scenario = Scenario(pre_error="Throttling", pre_error_times=1, retry_after="3")
    client = make_client(http_session, simulator, sleep=sleep, backoff_base_s=0.01, backoff_max_s=10.0)
    result = await client.generate(prompt(), out_dir=tmp_path, on_progress=on_progress)
    assert len(simulator.requests) == 2
    assert delays == [3.0]  # the server's Retry-After beats a 0.01 s jittered backoff
    assert stages.count("connecting") == 2 and "retrying" in stages
    assert abs(result.duration_s - 4.0) < 0.1


async def test_server_error_once_then_success(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(pre_error="InternalError", pre_error_times=1)
    result = await client.generate(prompt("wav"), out_dir=tmp_path)
    assert len(simulator.requests) == 2
    assert abs(result.duration_s - 4.0) < 0.1


async def test_backoff_is_exponential_with_full_jitter(http_session: Session, simulator: FunMusicSimulator) -> None:
    client = make_client(http_session, simulator, backoff_base_s=1.0, backoff_max_s=5.0)
    err = ServerError("x")
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [client.backoff_delay(attempt, err) for _ in range(200)]
        assert 0.0 <= min(delays) and max(delays) <= cap
        assert max(delays) > cap / 2  # jitter spreads over the whole range
    capped = ThrottledError("x", retry_after=60.0)
    assert client.backoff_delay(1, capped) == 5.0


async def test_connection_refused_is_connection_failed_and_retried(
    http_session: Session, tmp_path: Path, simulator: FunMusicSimulator
) -> None:
    await simulator.close()  # nothing listens on its port any more
    attempts: list[float] = []

    async def sleep(seconds: float) -> None:
        attempts.append(seconds)

    err = await fail(make_client(http_session, simulator, sleep=sleep), tmp_path)
    assert isinstance(err, ConnectionFailed)
    assert len(attempts) == 2  # two retries after the first try


# ---------------------------------------------------------------------------------------- stream faults


async def test_mid_stream_throttling_is_retried_whole(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(mid_error="Throttling", mid_error_after_chunks=2, chunk_bytes=8192)
    err = await fail(client, tmp_path)
    assert isinstance(err, ThrottledError)
    assert (err.code, err.status) == ("Throttling.RateQuota", 429)
    assert err.request_id == simulator.requests[-1]["request_id"]
    assert err.audio_delivered
    assert len(simulator.requests) == 3


async def test_mid_stream_moderation_is_not_retried(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(mid_error="DataInspectionFailed", mid_error_after_chunks=1)
    err = await fail(client, tmp_path)
    assert isinstance(err, ModerationError) and err.code == "DataInspectionFailed" and err.audio_delivered
    assert len(simulator.requests) == 1


async def test_a_retried_stream_starts_the_file_over(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    """The first stream delivers part of a song and then fails; the retry must not append to it."""

    async def heal(_seconds: float) -> None:
        simulator.scenario = Scenario()

    simulator.scenario = Scenario(mid_error="InternalError", mid_error_after_chunks=10, chunk_bytes=16384)
    result = await make_client(http_session, simulator, sleep=heal).generate(prompt("wav"), out_dir=tmp_path)
    assert len(simulator.requests) == 2
    assert abs(result.duration_s - 4.0) < 0.1
    assert result.audio_bytes == len(await render_test_audio(4.0, fmt="wav"))


@pytest.mark.parametrize(
    ("scenario", "what"),
    [
        (Scenario(drop_after_chunks=2, chunk_bytes=8192), "cut off"),
        (Scenario(no_stop=True), "without finish_reason"),
        (Scenario(invalid_base64_at_chunk=1, chunk_bytes=8192), "base64"),
        (Scenario(malformed_line_at_chunk=1, chunk_bytes=8192), "not JSON"),
    ],
    ids=["drop", "no-stop", "invalid-base64", "malformed-line"],
)
async def test_broken_streams(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path, scenario: Scenario, what: str
) -> None:
    simulator.scenario = scenario
    err = await fail(client, tmp_path, prompt("wav"))
    assert isinstance(err, BrokenStream)
    assert what in str(err)
    assert err.request_id == simulator.requests[-1]["request_id"]
    assert err.audio_delivered
    assert len(simulator.requests) == 3  # retryable: tried max_retries + 1 times


async def _undecodable(fmt: str) -> bytes:
    """A 4 s song that ffmpeg cannot decode to the end: mp3 with garbage in the middle, WAV with half a frame."""
    audio = await render_test_audio(4.0, fmt=fmt)
    if fmt == "wav":
        return audio + b"\x01"  # 16-bit stereo frames are 4 bytes: the last one is cut
    junk = bytes(random.Random(1).randrange(256) for _ in range(400))
    middle = len(audio) // 2
    return audio[:middle] + junk + audio[middle + len(junk) :]


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "download"])
async def test_audio_that_does_not_decode_is_a_broken_stream(
    client: FunMusicClient,
    simulator: FunMusicSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    streaming: bool,
) -> None:
    bad = await _undecodable(fmt)

    async def cached_audio(*_args: object) -> bytes:
        return bad

    monkeypatch.setattr(simulator_module, "cached_audio", cached_audio)
    request = prompt(fmt) if streaming else GenerationRequest(lyrics=SHORT_LYRICS, format=fmt)  # type: ignore[arg-type]
    err = await fail(client, tmp_path, request)
    assert isinstance(err, BrokenStream) and "does not decode" in str(err)
    assert err.audio_delivered and not err.retryable  # paid for: asking again would pay twice
    assert len(simulator.requests) == 1


async def test_a_wav_header_that_lies_about_its_size_is_measured_by_decoding(
    client: FunMusicClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed header claims 1 s of a 4 s song: the decode check reads to the end, the file is repaired."""

    def streamed_wav(audio: bytes) -> bytes:
        head = bytearray(audio[:4096])
        data_at = find_data_chunk(head)
        assert data_at is not None
        struct.pack_into("<I", head, data_at + 4, 48000 * 4)
        return bytes(head) + audio[4096:]

    monkeypatch.setattr(simulator_module, "streamed_wav", streamed_wav)
    result = await client.generate(prompt("wav"), out_dir=tmp_path)
    assert abs(result.duration_s - 4.0) < 0.1
    assert result.duration_s == (await probe_audio(result.audio_path)).duration_s


@pytest.mark.parametrize(("fmt", "rate", "channels"), [("mp3", 44100, 1), ("mp3", 48000, 2), ("wav", 22050, 1)])
async def test_measured_duration_rate_and_channels(
    http_session: Session, tmp_path: Path, fmt: str, rate: int, channels: int
) -> None:
    from tests.support.sim_fixtures import running_simulator

    async with running_simulator(Scenario(duration_s=2.5, sample_rate=rate, channels=channels)) as sim:
        result = await make_client(http_session, sim).generate(prompt(fmt), out_dir=tmp_path)
    info = await probe_audio(result.audio_path)
    assert abs(result.duration_s - 2.5) < 0.1 and result.duration_s == info.duration_s
    assert (result.sample_rate, result.channels, result.extra["codec"]) == (rate, channels, info.codec)


async def test_stall_longer_than_idle_timeout(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(stall_after_chunks=1, stall_s=2.0)
    client = make_client(http_session, simulator, idle_timeout_s=0.3, max_retries=1)
    err = await fail(client, tmp_path)
    assert isinstance(err, ServiceTimeout) and err.audio_delivered
    assert err.request_id == simulator.requests[-1]["request_id"]
    assert len(simulator.requests) == 2


async def test_total_deadline(http_session: Session, simulator: FunMusicSimulator, tmp_path: Path) -> None:
    simulator.scenario = Scenario(chunk_bytes=4096, chunk_delay_s=0.05)  # slow but never idle
    client = make_client(http_session, simulator, idle_timeout_s=1.0, total_deadline_s=0.4)
    err = await fail(client, tmp_path)
    assert isinstance(err, ServiceTimeout) and "deadline" in str(err)
    assert len(simulator.requests) == 1


# ------------------------------------------------------------------------------------------- downloads


def lyrics_request(fmt: str = "mp3") -> GenerationRequest:
    return GenerationRequest(lyrics=SHORT_LYRICS, format=fmt)


async def test_download_404_is_not_retried(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(download_status=404)
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and err.status == 404
    assert err.request_id == simulator.requests[-1]["request_id"]
    assert len(simulator.downloads) == 1 and len(simulator.requests) == 1


async def test_download_503_is_retried_but_not_the_generation(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(download_status=503)
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and err.status == 503 and not err.retryable
    assert len(simulator.downloads) == 3 and len(simulator.requests) == 1


async def test_download_timeout(http_session: Session, simulator: FunMusicSimulator, tmp_path: Path) -> None:
    simulator.scenario = Scenario(download_delay_s=2.0)
    client = make_client(http_session, simulator, idle_timeout_s=0.3, max_retries=0)
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and "timed out" in str(err)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "counted"])
async def test_download_over_the_cap(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path, chunked: bool
) -> None:
    simulator.scenario = Scenario(extra_download_bytes=200_000, download_chunked=chunked)
    client = make_client(http_session, simulator, download_max_bytes=150_000)
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and "limit" in str(err)
    assert len(simulator.downloads) == 1


async def test_download_from_a_foreign_host_is_refused(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(download_host="evil.example.com")
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and "evil.example.com" in str(err)
    assert simulator.downloads == []


async def test_redirect_to_a_foreign_host_is_refused(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(download_redirect_to="http://evil.example.com/{name}")
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and "evil.example.com" in str(err)
    assert len(simulator.downloads) == 1


async def test_redirect_within_allowed_hosts_is_followed(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(download_redirect_to=f"{simulator.root_url}/mirror/{{name}}")
    result = await client.generate(lyrics_request("wav"), out_dir=tmp_path)
    assert abs(result.duration_s - 4.0) < 0.1
    assert len(simulator.downloads) == 2 and simulator.downloads[1].startswith("/mirror/")


async def test_redirect_loop_stops(client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path) -> None:
    simulator.scenario = Scenario(download_redirect_to=f"{simulator.root_url}/oss/fun-music/x/{{name}}")
    err = await fail(client, tmp_path, lyrics_request())
    assert isinstance(err, DownloadError) and "redirects" in str(err)
    assert len(simulator.downloads) == 4  # the first GET and three redirects


def test_allowed_download_hosts(simulator: FunMusicSimulator) -> None:
    session = object.__new__(aiohttp.ClientSession)  # never used: only the url check runs
    client = FunMusicClient(
        session,
        api_key=Secret("k"),
        base_url="https://dashscope.aliyuncs.com/api/v1",
        extra_download_hosts=["cdn.example.org"],
    )
    for ok in [
        "http://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/pre/a.mp3?x=1",
        "https://dashscope.aliyuncs.com/x",
        "https://CDN.example.org/a.wav",
    ]:
        client.check_download_url(ok)
    for bad in ["http://evil-aliyuncs.com/a", "ftp://x.aliyuncs.com/a", "http://127.0.0.1/a", "file:///etc/passwd"]:
        with pytest.raises(DownloadError):
            client.check_download_url(bad)


# ----------------------------------------------------------------------------------------------- secrets


async def test_api_key_never_in_errors_reprs_or_logs(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures, done = tmp_path / "failures", tmp_path / "done"
    await asyncio.to_thread(failures.mkdir)
    await asyncio.to_thread(done.mkdir)
    client = make_client(http_session, simulator)
    texts = [repr(client)]
    for scenario in [Scenario(pre_error="Throttling"), Scenario(mid_error="Arrearage"), Scenario(no_stop=True)]:
        simulator.scenario = scenario
        err = await fail(client, failures)
        texts += [str(err), repr(err), err.summary, failure_text(err)]
    simulator.scenario = Scenario()
    await client.generate(prompt(), out_dir=done)
    await simulator.close()
    err = await fail(client, failures)  # connection refused: aiohttp's own text
    texts += [str(err), repr(err)]
    assert caplog.text
    for text in [*texts, caplog.text]:
        assert SIM_KEY not in text


def test_empty_key_is_a_config_error() -> None:
    session = object.__new__(aiohttp.ClientSession)
    with pytest.raises(ConfigError):
        FunMusicClient(session, api_key=Secret(""), base_url="https://dashscope.aliyuncs.com/api/v1")


async def test_from_settings(http_session: Session) -> None:
    settings = load_settings(
        {"DASHSCOPE_API_KEY": "sk-x", "SONGBOT_MAX_RETRIES": "5", "SONGBOT_IDLE_TIMEOUT": "7"}, require_discord=False
    )
    client = FunMusicClient.from_settings(http_session, settings)
    assert client.endpoint == "https://dashscope.aliyuncs.com/api/v1/services/audio/music/generation"
    assert (client.max_retries, client.idle_timeout_s) == (5, 7.0)
    other = FunMusicClient.from_settings(http_session, settings, base_url="http://127.0.0.1:1/api/v1/")
    assert other.endpoint == "http://127.0.0.1:1/api/v1/services/audio/music/generation"


# ----------------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("code", "status", "cls", "retryable"),
    [
        ("InvalidApiKey", 401, AuthError, False),
        ("NOT AUTHORIZED", 401, AuthError, False),
        ("AccessDenied.Unpurchased", 403, AuthError, False),
        ("Model.AccessDenied", 403, AuthError, False),
        ("Workspace.AccessDenied", 403, AuthError, False),
        ("Arrearage", 400, AuthError, False),
        ("PrepaidBillOverdue", 429, AuthError, False),
        ("CommodityNotPurchased", 429, AuthError, False),
        ("ModelNotFound", 404, AuthError, False),
        ("DataInspectionFailed", 400, ModerationError, False),
        ("data_inspection_failed", 400, ModerationError, False),
        ("IPInfringementSuspect", 400, ModerationError, False),
        ("CustomRoleBlocked", 400, ModerationError, False),
        ("FaqRuleBlocked", 400, ModerationError, False),
        ("InvalidParameter", 400, ParameterError, False),
        ("Throttling", 429, ThrottledError, True),
        ("Throttling.BurstRate", 429, ThrottledError, True),
        ("Throttling.RateQuota", 400, ThrottledError, True),  # the SDK's status for every mid-stream error
        ("Throttling.AllocationQuota", 429, ThrottledError, False),
        ("InternalError.Algo", 500, ServerError, True),
        ("ModelUnavailable", 503, ServerError, True),
        ("SomethingNew", 502, ServerError, True),
        ("SomethingNew", 429, ThrottledError, True),
        ("SomethingNew", 400, ParameterError, False),
        ("SomethingNew", 418, ServiceError, False),
        ("", None, ServiceError, False),
    ],
)
def test_classification_by_code_then_status(
    code: str, status: int | None, cls: type[ServiceError], retryable: bool
) -> None:
    err = classify(ErrorBody(code=code, message="m", request_id="rid", status=status))
    assert type(err) is cls
    assert err.retryable is retryable
    assert (err.code, err.request_id, err.status) == (code or None, "rid", status)


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# --------------------------------------------------------------------------------------- audio helpers


async def test_sink_drops_repeated_wav_headers_and_rejects_joined_padding(tmp_path: Path) -> None:
    wav = await render_test_audio(0.5, fmt="wav")
    data_at = find_data_chunk(wav[:4096])
    assert data_at is not None
    header, samples = wav[: data_at + 8], wav[data_at + 8 :]
    half = len(samples) // 2
    sink = AudioSink(tmp_path / "a.wav", "wav")
    await asyncio.to_thread(sink.reset)
    parts = [header + samples[:half], header + samples[half:]]
    await asyncio.to_thread(sink.write_stream_payloads, [base64.b64encode(p).decode() for p in parts], None)
    await asyncio.to_thread(sink.close)
    assert sink.dropped_headers == 1 and sink.bytes_written == len(wav)
    assert await asyncio.to_thread((tmp_path / "a.wav").read_bytes) == wav
    joined = base64.b64encode(b"ab").decode() + base64.b64encode(b"cd").decode()  # "YWI=Y2Q="
    await asyncio.to_thread(sink.reset)
    with pytest.raises(BrokenStream):
        await asyncio.to_thread(sink.write_stream_payloads, [joined], "rid")
    await asyncio.to_thread(sink.discard)


# ----------------------------------------------------------------------------------------------- limiter


async def test_limiter_sliding_window() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(3, 60.0, clock=lambda: now[0], sleep=sleep)
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        await limiter.acquire()
    assert slept == []
    now[0] = 30.0
    await limiter.acquire()  # the 4th in a minute waits until the first leaves the window (t=60)
    assert slept == [30.0] and now[0] == 60.0
    await limiter.acquire()  # the next waits for t=70 (the second stamp + 60)
    assert slept == [30.0, 10.0]
    now[0] = 200.0
    await limiter.acquire()
    assert len(slept) == 2


async def test_limiter_serves_waiters_in_order() -> None:
    now = [0.0]
    order: list[int] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    limiter = RateLimiter(1, 1.0, clock=lambda: now[0], sleep=sleep)

    async def take(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4] and now[0] >= 4.0


def test_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)


async def test_client_takes_a_limiter_slot_per_post(
    http_session: Session, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    now = [0.0]
    limiter = RateLimiter(100, 60.0, clock=lambda: now[0])
    simulator.scenario = Scenario(pre_error="InternalError", pre_error_times=1)
    await make_client(http_session, simulator, limiter=limiter).generate(prompt(), out_dir=tmp_path)
    assert len(limiter._stamps) == 2


async def test_cancelling_mid_stream_leaves_no_file(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(chunk_bytes=16384, chunk_delay_s=0.02)
    started = asyncio.Event()

    async def on_progress(p: Progress) -> None:
        if p.stage == "generating":
            started.set()

    task = asyncio.create_task(client.generate(prompt("wav"), out_dir=tmp_path, on_progress=on_progress))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await files_in(tmp_path) == []


async def test_cancelling_while_ffmpeg_checks_the_stream_stops_it(
    client: FunMusicClient, simulator: FunMusicSimulator, tmp_path: Path
) -> None:
    simulator.scenario = Scenario(duration_s=12.0, chunk_bytes=65536, chunk_delay_s=0.01)
    halfway = asyncio.Event()

    async def on_progress(p: Progress) -> None:
        if p.bytes_received > 1_500_000:  # the worker has had its first batch: the decode check is running
            halfway.set()

    task = asyncio.create_task(client.generate(prompt("wav"), out_dir=tmp_path, on_progress=on_progress))
    await asyncio.wait_for(halfway.wait(), 10)
    assert len(await ffmpeg_children()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ffmpeg_children() == []
    assert await files_in(tmp_path) == []


async def test_a_failing_progress_callback_does_not_fail_the_song(
    client: FunMusicClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_progress(_p: Progress) -> None:
        raise RuntimeError("the message to edit is gone")

    result = await client.generate(prompt(), out_dir=tmp_path, on_progress=on_progress)
    assert abs(result.duration_s - 4.0) < 0.1
    assert "progress callback failed" in caplog.text


# ------------------------------------------------------------------------------------------- decode check


async def _checked(audio: bytes, piece: int = 50_000) -> DecodeCheck:
    """A decode check fed ``audio`` in pieces, as a stream would: what remains is :meth:`DecodeCheck.finish`."""
    check = await DecodeCheck.start(audio[:4096])
    for at in range(0, len(audio), piece):
        await asyncio.to_thread(check.feed, [audio[at : at + piece]])
    return check


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_decode_check_of_a_stream_agrees_with_probing_the_file(tmp_path: Path, fmt: str) -> None:
    audio = await render_test_audio(3.0, sample_rate=44100, channels=1, fmt=fmt)
    path = tmp_path / f"a.{fmt}"
    await asyncio.to_thread(path.write_bytes, audio)
    assert await (await _checked(audio)).finish() == await probe_audio(path)


@pytest.mark.parametrize("claimed", [0xFFFFFFFF, 0, 48000 * 4], ids=["placeholder", "zero", "one-second"])
async def test_decode_check_reads_a_streamed_wav_to_the_end(claimed: int) -> None:
    wav = bytearray(await render_test_audio(3.0, fmt="wav"))
    data_at = find_data_chunk(wav[:4096])
    assert data_at is not None
    struct.pack_into("<I", wav, 4, claimed)
    struct.pack_into("<I", wav, data_at + 4, claimed)
    info = await (await _checked(bytes(wav))).finish()
    assert (info.duration_s, info.sample_rate, info.channels) == (3.0, 48000, 2)


async def test_decode_check_refuses_what_does_not_decode() -> None:
    for fmt in ("mp3", "wav"):
        check = await _checked(await _undecodable(fmt))
        with pytest.raises(FfmpegError, match="not decodable"):
            await check.finish()


async def test_decode_check_fails_if_ffmpeg_stops_reading_early(tmp_path: Path) -> None:
    """An AIFF whose header claims 1 s of 20 s: ffmpeg stops reading there, so the rest was never checked."""
    await asyncio.to_thread((tmp_path / "a.wav").write_bytes, await render_test_audio(20.0, channels=1, fmt="wav"))
    await run_ffmpeg("-loglevel", "error", "-i", str(tmp_path / "a.wav"), str(tmp_path / "a.aiff"))
    aiff = bytearray(await asyncio.to_thread((tmp_path / "a.aiff").read_bytes))
    sound_at = aiff.find(b"SSND")
    struct.pack_into(">I", aiff, sound_at + 4, 8 + 48000 * 2)
    check = await _checked(bytes(aiff), piece=256 * 1024)
    with pytest.raises(FfmpegError, match="stopped reading"):
        await check.finish()


async def test_decode_check_abort_stops_ffmpeg() -> None:
    check = await _checked((await render_test_audio(1.0))[:5000])
    await check.abort()
    await check.abort()
    assert await ffmpeg_children() == []


def test_parse_decode_log() -> None:
    good = (
        "  Stream #0:0: Audio: mp3 (mp3float), 44100 Hz, mono, fltp, 128 kb/s\n"
        "size=N/A time=00:01:02.50 bitrate=N/A speed= 500x\n"
    )
    assert parse_decode_log(good, 0) == AudioInfo(duration_s=62.5, sample_rate=44100, channels=1, codec="mp3")
    five_one = good.replace("mono", "6 channels")
    assert parse_decode_log(five_one, 0).channels == 6
    with pytest.raises(FfmpegError):
        parse_decode_log(good, 183)
    with pytest.raises(FfmpegError, match="Header missing"):
        parse_decode_log("[mp3float @ 0x55d0] [error] Header missing\n" + good, 0)
    with pytest.raises(FfmpegError, match="Task finished"):
        parse_decode_log("[aist#0:0/mp3 @ 0x5a] [dec:mp3float @ 0x5b] [error] Task finished with error\n" + good, 0)
    tagged = "[info]     title           : [error] a song called [fatal]\n" + good  # the song's tags, not ffmpeg
    assert parse_decode_log(tagged, 0).duration_s == 62.5
    with pytest.raises(FfmpegError):
        parse_decode_log("size=N/A time=00:00:01.00\n", 0)  # no audio stream


EVENTS = [
    '{"output":{"audio":{"data":"QUJD","id":"a"},"finish_reason":"null"},"request_id":"r"}',
    '{"output":{"audio":{"data":"QU\\/D"}}}',  # an escaped "/": only json.loads reads that right
    '{"output":{"audio":{"id":"x","data":"QUJD"}}}',
    '{"output":{"data":"zz","audio":{"data":"QUJD"}}}',
    '{"output":{"audio":{"data":"QUJD","data":""}}}',  # a repeated key: the last one counts
    '{"output":{"audio":{"data":""}}}',
    '{"x\\"data":"QUJD","output":{"audio":{"data":""}}}',
    '{"output":{"audio":{"data": "QUJD"}}}',
    '{"output":{"audio":{"data":"QUJD"}},"output":{"audio":{"id":1}}}',
    '{"lyrics":"a \\"data\\":\\"b","output":{"audio":{"data":"QUJD"}}}',
    '{"output":{"audio":{"data":"QUJD"}}',
    '["data":"x"]',
]


@pytest.mark.parametrize("text", EVENTS)
def test_parse_event_json_is_json_loads(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_event_json(text)
        return
    assert parse_event_json(text) == expected


@pytest.mark.parametrize("text", EVENTS)
def test_parse_event_json_of_the_bytes_received_is_json_loads(text: str) -> None:
    """From bytes, the cut-out audio comes back as a view of them (no copy, no str): the same base64."""
    raw = text.encode()
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_event_json(raw)
        return
    got = parse_event_json(raw)
    audio = got.get("output", {}).get("audio", {})
    if isinstance(audio.get("data"), memoryview):
        audio["data"] = str(audio["data"], "ascii")
    assert got == expected


def test_a_byte_that_is_not_ascii_reaches_the_base64_decoder_as_it_came() -> None:
    """json.loads would read it as U+FFFD; either way the strict decoder refuses it."""
    assert parse_event_json(b'{"output":{"audio":{"data":"Q\xffJD"}}}')["output"]["audio"]["data"] == b"Q\xffJD"


async def test_a_stream_larger_than_the_cap_is_refused(http_session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_simulator(Scenario(duration_s=4.0, chunk_bytes=8192)) as sim:
        capped = make_client(http_session, sim, download_max_bytes=20_000)
        with pytest.raises(DownloadError) as caught:
            await capped.generate(GenerationRequest(prompt="a long song about too many bytes"), out_dir=tmp_path)
        assert "cap" in str(caught.value) and not caught.value.retryable
        assert len(sim.requests) == 1
        assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


def test_events_with_the_same_rest_are_parsed_once_and_never_share_their_audio() -> None:
    first = b'{"output":{"audio":{"data":"QUJD","id":"a"},"finish_reason":"null"},"request_id":"r-same"}'
    second = first.replace(b"QUJD", b"REVG")
    one, two = parse_event_json(first), parse_event_json(second)
    assert bytes(one["output"]["audio"]["data"]) == b"QUJD" and bytes(two["output"]["audio"]["data"]) == b"REVG"
    one["output"]["audio"]["data"] = "changed"  # a caller changing what it got does not reach the next event
    assert bytes(parse_event_json(first)["output"]["audio"]["data"]) == b"QUJD"
    assert one["request_id"] == two["request_id"] == "r-same"
