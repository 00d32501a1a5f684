"""What the bot checks at start, before it connects to Discord.

Each problem is a :class:`StartupError` whose text is one sentence for the operator: what is wrong, and what to do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from services.clock import Clock
from services.errors import ConfigError, SongbotError
from services.ffmpeg import FfmpegError, run_ffmpeg
from services.settings import Settings
from services.store import Store

FFMPEG_CHECK_TIMEOUT_S = 30.0


class StartupError(SongbotError):
    """The bot cannot start; the message is the one sentence the operator reads."""


def _reason(exc: BaseException) -> str:
    """A short, one-line cause: the driver's own words without SQLAlchemy's wrapping and links."""
    cause: BaseException = exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        cause = exc.orig
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    else:
        text = str(cause) or type(cause).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(cause).__name__
    return " ".join(first.split()).rstrip(".")


def _where(url: str) -> str:
    """The database named without its password: "SQLite file data/songbot.db" or "PostgreSQL at host:5432/db"."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite file {parsed.database}"
    port = f":{parsed.port}" if parsed.port else ""
    return f"PostgreSQL at {parsed.host or 'localhost'}{port}/{parsed.database or ''}"


async def check_ffmpeg() -> None:
    try:
        await run_ffmpeg("-version", timeout=FFMPEG_CHECK_TIMEOUT_S)
    except (FfmpegError, OSError) as exc:
        raise StartupError(
            f"ffmpeg does not run ({_reason(exc)}): install ffmpeg on PATH, or remove the broken one so songbot "
            "uses the copy from the imageio-ffmpeg package."
        ) from None


async def check_database(url: str, clock: Clock) -> None:
    """Open the database and apply pending migrations (what the bot does next anyway), then close it."""
    try:
        store = await Store.open(url, clock=clock)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise StartupError(
            f"Cannot open the database ({_where(url)}): {_reason(exc)}; check DATABASE_URL and that the "
            "database is running."
        ) from None
    await store.close()


def _probe_writable(folder: Path) -> None:
    """*Blocking.* Create the folder if needed and write (then remove) a file in it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    os.close(fd)
    os.unlink(name)


async def check_work_dir(work_dir: Path) -> None:
    try:
        await asyncio.to_thread(_probe_writable, work_dir)
    except OSError as exc:
        raise StartupError(
            f"The work folder {work_dir} is not writable ({_reason(exc)}); set SONGBOT_DATA_DIR to a folder "
            "songbot may write to."
        ) from None


async def prepare(settings: Settings, clock: Clock) -> Path:
    """Every check before connecting; returns the work folder. Raises StartupError.

    (What a killed run left in the work folder is removed once its jobs are marked interrupted: ``SongBot``'s
    recovery, then :func:`services.housekeeping.sweep`.)
    """
    work_dir = settings.data_dir / "work"
    await check_work_dir(work_dir)
    await check_ffmpeg()
    await check_database(settings.database_url, clock)
    return work_dir
