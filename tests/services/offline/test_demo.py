"""`python bot.py demo`: a real process, no token, no key, no network; the conversation on the terminal and the
delivered files in the output folder, which ffmpeg decodes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from services.ffmpeg import probe_audio

ROOT = Path(__file__).resolve().parents[3]


async def test_demo_runs_the_whole_conversation_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "DASHSCOPE_", "DATABASE_", "SONGBOT_"))}
    out_dir = tmp_path / "demo-out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bot.py"),
        "demo",
        "--out",
        str(out_dir),
        "--song-seconds",
        "4",
        cwd=tmp_path,  # no .env there, no data dir: the demo needs neither
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    text = stdout.decode()
    assert proc.returncode == 0, (text, stderr.decode())
    assert stderr.decode().strip() == "", stderr.decode()  # no warnings, no tracebacks
    lines = text.splitlines()

    def index(fragment: str, after: int = -1) -> int:
        for i, line in enumerate(lines):
            if i > after and fragment in line:
                return i
        raise AssertionError(f"{fragment!r} not after line {after} in:\n{text}")

    first = index("ana /song prompt:")
    thinking = index("… is thinking", first)
    progress = index("Generating", thinking)
    delivered = index("📎", progress)
    assert "[Regenerate]" in lines[delivered] and ".mp3" in lines[delivered]
    form = index("opens a form", delivered)
    second = index("📎", form)
    cancel = index("presses [Cancel]", second)
    index("Cancelled", cancel)
    refusal = index("daily limit of 2 songs", cancel)
    assert "(only they see it)" in lines[refusal] and "<t:" not in lines[refusal]

    files = sorted(await asyncio.to_thread(os.listdir, out_dir))
    assert [name for name in files if name.startswith("1-")] == sorted(
        ["1-a-sea-shanty-about-a-flaky-test-that-only-fails.mp3", "1-lyrics.txt", "1-waveform.png"]
    )
    assert {"2-lyrics.txt", "2-waveform.png"} <= set(files)
    for name in files:
        if name.endswith(".mp3"):
            info = await probe_audio(out_dir / name)
            assert 3.0 < info.duration_s < 6.0, (name, info)
        if name.endswith(".png"):
            assert (await asyncio.to_thread((out_dir / name).read_bytes))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "build was green" in await asyncio.to_thread((out_dir / "2-lyrics.txt").read_text, "utf-8")
