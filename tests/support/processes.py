"""The bot as a child process: ``python bot.py`` run from the checkout, its output collected as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
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


@contextlib.asynccontextmanager
async def bot_process(env: Mapping[str, str]) -> AsyncIterator[BotProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "bot.py",
        cwd=ROOT,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    bot = BotProcess(proc)
    bot.reader = asyncio.create_task(bot._read())
    try:
        yield bot
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bot.reader
