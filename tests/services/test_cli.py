"""``python bot.py generate`` end to end: a simulator on a real socket, the CLI on its own loop in a thread."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from services.cli import ProgressBar, run_generate
from services.ffmpeg import probe_audio
from services.funmusic.request import Progress, ProgressStage
from services.offline.simulator import FunMusicSimulator, Scenario
from tests.support.sim_fixtures import SIM_KEY

PROMPT = "a dreamy synth-pop song about city lights at night"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, simulator: FunMusicSimulator) -> FunMusicSimulator:
    """The environment a user would set to point the CLI at a DashScope (here: the simulator)."""
    for name in ("FUN_MUSIC_MODEL", "LOG_LEVEL", "SONGBOT_MAX_RETRIES", "SONGBOT_IDLE_TIMEOUT", "DISCORD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", simulator.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", SIM_KEY)
    monkeypatch.setenv("SONGBOT_SIMULATE", "0")
    monkeypatch.setenv("SONGBOT_MAX_RETRIES", "0")
    return simulator


async def cli(*argv: str) -> tuple[int, str]:
    """Run the command in a worker thread (it starts its own event loop) and return (exit code, stderr)."""
    err = io.StringIO()
    code = await asyncio.to_thread(run_generate, list(argv), stderr=err)
    return code, err.getvalue()


async def listing(path: Path) -> list[str]:
    return sorted(p.name for p in await asyncio.to_thread(lambda: list(path.iterdir())))


def assert_one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0]
    assert "Traceback" not in stderr and SIM_KEY not in stderr
    return errors[0]


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
async def test_prompt_to_file_and_lyrics(env: FunMusicSimulator, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"song.{fmt}"
    code, stderr = await cli("--prompt", PROMPT, "--gender", "male", "--out", str(out))
    assert code == 0, stderr
    info = await probe_audio(out)
    assert abs(info.duration_s - 4.0) < 0.1 and info.channels == 2 and info.sample_rate == 48000
    lyrics = await asyncio.to_thread(out.with_suffix(".txt").read_text, "utf-8")
    assert lyrics.startswith("[verse]\n") and "lights" in lyrics
    assert await listing(tmp_path) == sorted([out.name, "song.txt"])
    sent = env.requests[-1]
    assert sent["sse"] is True and sent["body"]["input"]["gender"] == "male"
    assert sent["body"]["input"]["format"] == fmt
    assert "generating" in stderr and f"wrote {out}" in stderr and SIM_KEY not in stderr


async def test_lyrics_file_instrumental_flags_and_format(env: FunMusicSimulator, tmp_path: Path) -> None:
    lyrics_file = tmp_path / "words.txt"
    await asyncio.to_thread(lyrics_file.write_text, "[verse]\nSalt wind on the pier,\nlanterns low.\n", "utf-8")
    out = tmp_path / "out" / "tune"
    await asyncio.to_thread(out.parent.mkdir)
    code, stderr = await cli("--lyrics-file", str(lyrics_file), "--format", "wav", "--watermark", "--out", str(out))
    assert code == 0, stderr
    sent = env.requests[-1]
    assert sent["sse"] is False and sent["body"]["input"]["enable_aigc_watermark"] is True
    info = await probe_audio(out)
    assert abs(info.duration_s - 5.0) < 0.1  # the watermark adds a second
    assert await asyncio.to_thread(out.with_suffix(".txt").read_text, "utf-8") == (
        "[verse]\nSalt wind on the pier,\nlanterns low.\n"
    )


async def test_service_error_is_one_line_and_leaves_nothing(env: FunMusicSimulator, tmp_path: Path) -> None:
    env.scenario = Scenario(pre_error="Arrearage")
    out = tmp_path / "song.mp3"
    code, stderr = await cli("--prompt", PROMPT, "--out", str(out))
    assert code == 1
    line = assert_one_error_line(stderr)
    assert "code=Arrearage" in line and env.requests[-1]["request_id"] in line
    assert await listing(tmp_path) == []


async def test_mid_stream_failure_leaves_no_partial_file(env: FunMusicSimulator, tmp_path: Path) -> None:
    env.scenario = Scenario(drop_after_chunks=3, chunk_bytes=8192)
    out = tmp_path / "song.wav"
    code, stderr = await cli("--prompt", PROMPT, "--out", str(out))
    assert code == 1
    assert "cut off" in assert_one_error_line(stderr)
    assert await listing(tmp_path) == []  # neither the song, nor its lyrics, nor the temp folder


async def test_existing_file_survives_a_failure(env: FunMusicSimulator, tmp_path: Path) -> None:
    out = tmp_path / "song.mp3"
    await asyncio.to_thread(out.write_bytes, b"the old song")
    env.scenario = Scenario(no_stop=True)
    code, stderr = await cli("--prompt", PROMPT, "--out", str(out))
    assert code == 1
    assert_one_error_line(stderr)
    assert await asyncio.to_thread(out.read_bytes) == b"the old song"


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--prompt", PROMPT], 2, "--out"),
        (["--out", "{tmp}/x.mp3"], 2, "one of the arguments"),
        (["--prompt", PROMPT, "--lyrics-file", "{tmp}/a.txt", "--out", "{tmp}/x.mp3"], 2, "not allowed with"),
        (["--prompt", PROMPT, "--format", "wav", "--out", "{tmp}/x.mp3"], 2, "make them agree"),
        (["--prompt", PROMPT, "--out", "{tmp}/x.txt"], 2, ".txt"),
        (["--prompt", PROMPT, "--gender", "robot", "--out", "{tmp}/x.mp3"], 2, "invalid choice"),
        (["--lyrics-file", "/nonexistent/lyrics.txt", "--out", "{tmp}/x.mp3"], 2, "cannot read"),
        (["--prompt", "   ", "--out", "{tmp}/x.mp3"], 1, "prompt or lyrics"),
        (["--prompt", PROMPT, "--out", "/nonexistent/dir/x.mp3"], 2, "does not exist"),
    ],
)
async def test_bad_command_lines(
    env: FunMusicSimulator, tmp_path: Path, argv: list[str], code: int, words: str
) -> None:
    got, stderr = await cli(*(arg.replace("{tmp}", str(tmp_path)) for arg in argv))
    assert got == code
    assert words in assert_one_error_line(stderr)
    assert await listing(tmp_path) == []
    assert env.requests == []


async def test_config_error_is_one_line(
    env: FunMusicSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "dashscope.example")
    code, stderr = await cli("--prompt", PROMPT, "--out", str(tmp_path / "x.mp3"))
    assert code == 1
    assert "DASHSCOPE_BASE_URL" in assert_one_error_line(stderr)


async def test_simulated_mode_runs_the_simulator_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    monkeypatch.setenv("SONGBOT_SIMULATE", "1")
    out = tmp_path / "demo.mp3"
    code, stderr = await cli("--prompt", PROMPT, "--out", str(out))
    assert code == 0, stderr
    assert "SIMULATED" in stderr and "SIMULATED" in caplog.text
    assert (await probe_audio(out)).duration_s > 10


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_generate(["--help"]) == 0
    assert "--lyrics-file" in capsys.readouterr().out


async def test_progress_bar_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    await bar(Progress(ProgressStage.CONNECTING))
    for n in range(1, 5):
        await bar(Progress(ProgressStage.GENERATING, bytes_received=n * 1_000_000, seconds_received=n * 60.0))
    await bar(Progress(ProgressStage.RETRYING, attempt=1))
    await bar(Progress(ProgressStage.CONNECTING, attempt=2))
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["connecting", "generating", "retrying", "connecting"]
    assert "(attempt 2)" in lines[-1]
    full = bar.render(Progress(ProgressStage.GENERATING, bytes_received=4_000_000, seconds_received=240.0))
    assert "[" + "#" * 28 + "]" in full and "4.00 MB" in full and "240.0 s of audio" in full
