"""Periodic housekeeping: retention of members' text, and audio files nobody will use again.

Run by ``cogs/housekeeping.py`` every hour (and once at start). Both parts ask the database what is still in use,
so any number of processes may sweep the same database (and a shared data dir) without touching a running job.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from services.store import Store

log = logging.getLogger(__name__)

_JOB_DIR = re.compile(r"job-(\d+)")
#: A loose ``.part`` file (a download or stream being written) this old has no writer left.
STALE_PART_S = 6 * 3600


@dataclass(frozen=True)
class SweepReport:
    erased_jobs: int
    removed_paths: int


async def sweep(store: Store, work_dir: Path, retention_days: int) -> SweepReport:
    """Erase prompts and lyrics of jobs that ended more than ``retention_days`` ago (0: keep them), and remove
    work-dir leftovers: ``job-<id>`` folders of jobs that ended (or do not exist) and stale ``.part`` files."""
    erased = await store.erase_old_text(retention_days) if retention_days > 0 else 0
    removed = await _remove_leftovers(store, work_dir)
    if erased or removed:
        log.info("housekeeping: erased the text of %d old job(s); removed %d leftover file(s)", erased, removed)
    return SweepReport(erased_jobs=erased, removed_paths=removed)


def _candidates(work_dir: Path) -> tuple[dict[int, Path], list[Path]]:
    folders: dict[int, Path] = {}
    parts: list[Path] = []
    if not work_dir.is_dir():
        return folders, parts
    now = time.time()
    for path in work_dir.iterdir():
        match = _JOB_DIR.fullmatch(path.name)
        if match and path.is_dir():
            folders[int(match.group(1))] = path
        elif path.suffix == ".part" and now - path.stat().st_mtime > STALE_PART_S:
            parts.append(path)
    return folders, parts


def _remove(paths: list[Path]) -> int:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(paths)


async def _remove_leftovers(store: Store, work_dir: Path) -> int:
    folders, parts = await asyncio.to_thread(_candidates, work_dir)
    running = await store.running_job_ids(sorted(folders))
    unused = [path for job_id, path in folders.items() if job_id not in running]
    return await asyncio.to_thread(_remove, unused + parts)
