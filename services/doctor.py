"""``python bot.py doctor``: a checklist an operator runs when something is wrong (or before going live).

One line per check, ``ok``, ``FAIL`` or ``skip``, and a non-zero exit when any check failed. The checks here need
no Discord; ``cogs/doctor.py`` adds the Discord ones (the token, the commands, the channels) and ``bot.py`` runs
them all. Nothing here spends money or changes anything: the DashScope check sends a request the service refuses
before generating (no input), the database check reads the schema version without migrating, and the work-dir
check writes and removes one empty file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TextIO

import aiohttp
import sqlalchemy as sa

from services.settings import Settings
from services.startup import StartupError, check_ffmpeg, check_work_dir
from services.store.engine import Database, sqlite_path
from services.store.migrations import LATEST, current_version

GENERATION_PATH = "/services/audio/music/generation"
HTTP_TIMEOUT_S = 15.0


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    detail: str


Check = Callable[[], Awaitable[list[CheckResult]]]


def ok(name: str, detail: str) -> list[CheckResult]:
    return [CheckResult(name, Verdict.OK, detail)]


def fail(name: str, detail: str) -> list[CheckResult]:
    return [CheckResult(name, Verdict.FAIL, detail)]


def skip(name: str, detail: str) -> list[CheckResult]:
    return [CheckResult(name, Verdict.SKIP, detail)]


async def run_checklist(checks: Sequence[tuple[str, Check]], out: TextIO) -> int:
    """Run each (name, check) in order, print one line per result; 0 when nothing failed, 1 otherwise. A check
    that raises is one FAIL line under its name (with the exception's type), never a traceback."""
    failed = 0
    for name, check in checks:
        try:
            results = await check()
        except Exception as exc:
            results = fail(name, f"the check itself failed: {type(exc).__name__}: {exc}")
        for result in results:
            failed += result.verdict is Verdict.FAIL
            out.write(f"{result.verdict.value:>4}  {result.name}: {result.detail}\n")
    out.write("\nall checks passed\n" if not failed else f"\n{failed} check(s) failed\n")
    out.flush()
    return 1 if failed else 0


# --- checks that need no Discord ----------------------------------------------------------------------------


async def check_dashscope(settings: Settings) -> list[CheckResult]:
    """The key is set and the base URL answers with it. The request has no input, which DashScope refuses with
    400 InvalidParameter after checking the key and the model access, and before generating anything."""
    name = "DashScope"
    if settings.simulate:
        return skip(name, "SONGBOT_SIMULATE=1: the bot uses its built-in simulator (songs are test tones)")
    if not settings.dashscope_api_key:
        return fail(name, "DASHSCOPE_API_KEY is not set: the bot would use its simulator, whose songs are test tones")
    url = settings.dashscope_base_url + GENERATION_PATH
    headers = {"Authorization": f"Bearer {settings.dashscope_api_key.reveal()}", "Content-Type": "application/json"}
    body = {"model": settings.fun_music_model, "input": {}}
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers) as r,
        ):
            status, text = r.status, await r.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return fail(
            name, f"{settings.dashscope_base_url} does not answer ({type(exc).__name__}); check DASHSCOPE_BASE_URL"
        )
    code = _error_code(text)
    if status == 400 and code in ("InvalidParameter", None):
        return ok(name, f"the key is accepted and {settings.fun_music_model} answers at {settings.dashscope_base_url}")
    if status == 401:
        return fail(name, f"DashScope refused the key ({code}): copy DASHSCOPE_API_KEY again (Beijing region)")
    if status == 403:
        return fail(name, f"the key has no access to {settings.fun_music_model} ({code}): apply for it in Model Studio")
    if status == 404:
        return fail(name, f"{settings.fun_music_model} was not found ({code}): check FUN_MUSIC_MODEL")
    if status == 400:
        return fail(name, f"DashScope refused the account ({code}): check its billing state")
    return fail(name, f"unexpected answer {status} ({code or 'no code'}) from {settings.dashscope_base_url}")


def _error_code(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return str(code) if code else None


async def check_ffmpeg_runs(settings: Settings) -> list[CheckResult]:
    try:
        await check_ffmpeg()
    except StartupError as exc:
        return fail("ffmpeg", str(exc))
    return ok("ffmpeg", "runs")


async def check_database(settings: Settings) -> list[CheckResult]:
    """Reachable, and migrated to the version this songbot knows (read only: the bot migrates at start)."""
    name = "database"
    path = sqlite_path(settings.database_url)
    if path is not None and not await asyncio.to_thread(path.exists):
        return fail(name, f"there is no database at {path} yet: the bot creates it at its first start")
    database = await Database.connect(settings.database_url)
    try:
        async with database.read() as conn:
            version = await current_version(conn)
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        return fail(name, f"cannot be reached ({type(exc).__name__}): check DATABASE_URL and that it is running")
    finally:
        await database.dispose()
    where = database.backend
    if version == LATEST:
        return ok(name, f"{where} reachable, schema at version {version} (current)")
    if version < LATEST:
        return fail(name, f"{where} at schema version {version} of {LATEST}: start the bot once to migrate it")
    return fail(name, f"{where} at schema version {version}, newer than this songbot ({LATEST}): upgrade songbot")


async def check_work_dir_writable(settings: Settings) -> list[CheckResult]:
    work_dir = settings.data_dir / "work"
    try:
        await check_work_dir(work_dir)
    except StartupError as exc:
        return fail("work folder", str(exc))
    return ok("work folder", f"{work_dir} is writable")
