"""The bot as a child process: ``python bot.py`` run from the checkout, its output collected as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The checkout's root (where bot.py, README.md and pyproject.toml are).
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BotProcess:
    """`python bot.py` running as a child; its log lines are collected as they come (the pipe never fills)."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The harness's settings on top of a clean environment (nothing of the developer's own bot leaks in)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DISCORD_", "DASHSCOPE_"))}
    return {**base, **env, "PYTHONUNBUFFERED": "1"}


async def _spawn(args: Sequence[str], env: Mapping[str, str], *, stderr: int) -> asyncio.subprocess.Process:
    """``python bot.py ARGS`` from the checkout, with a clean environment plus ``env``, stdout piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "bot.py",
        *args,
        cwd=ROOT,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


@contextlib.asynccontextmanager
async def bot_process(env: Mapping[str, str]) -> AsyncIterator[BotProcess]:
    proc = await _spawn((), env, stderr=asyncio.subprocess.STDOUT)
    bot = BotProcess(proc)
    bot.reader = asyncio.create_task(bot._read())
    try:
        yield bot
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bot.reader


async def run_bot_command(*args: str, env: Mapping[str, str], timeout: float = 60) -> tuple[int, str, str]:
    """Run ``python bot.py ARGS`` to its end; returns (exit code, stdout, stderr)."""
    proc = await _spawn(args, env, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def broken_ffmpeg_path(folder: Path, complaint: str) -> str:
    """A PATH whose first ``ffmpeg`` fails as a broken install does: ``complaint`` on stderr, exit code 127."""

    def install() -> None:
        folder.mkdir(parents=True)
        ffmpeg = folder / "ffmpeg"
        ffmpeg.write_text(f"#!/bin/sh\necho '{complaint}' >&2\nexit 127\n")
        ffmpeg.chmod(0o755)

    await asyncio.to_thread(install)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
