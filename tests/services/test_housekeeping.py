"""Housekeeping: members' text is erased after the retention period, work-dir leftovers go, running jobs are
untouched; on both back ends, and in the real bot at start."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.housekeeping import STALE_PART_S, sweep
from services.store import Store
from services.store.records import JobStatus
from tests.support.clock import FakeClock
from tests.support.e2e import running_bot

DAY = 24 * 3600.0


async def _job(store: Store, prompt: str, status: JobStatus | None) -> int:
    job_id = await store.create_job(
        guild_id=1, channel_id=2, user_id=3, prompt=prompt, lyrics=f"{prompt} lyrics", options={}
    )
    if status is not None:
        await store.transition(job_id, status)
    return job_id


async def test_text_of_jobs_older_than_the_retention_is_erased(store: Store, clock: FakeClock) -> None:
    old = await _job(store, "old", JobStatus.DELIVERED)
    old_failed = await _job(store, "old failed", JobStatus.FAILED)
    running = await _job(store, "running", JobStatus.QUEUED)  # accepted 100 days ago, still unfinished
    clock.advance(80 * DAY)
    recent = await _job(store, "recent", JobStatus.DELIVERED)
    clock.advance(20 * DAY)  # old ended 100 days ago, recent 20

    assert await store.erase_old_text(90) == 2
    for job_id in (old, old_failed):
        job = await store.get_job(job_id)
        assert job is not None and job.prompt is None and job.lyrics is None
        assert job.status in (JobStatus.DELIVERED, JobStatus.FAILED)  # the row stays (usage, history counts)
    for job_id, prompt in ((running, "running"), (recent, "recent")):
        job = await store.get_job(job_id)
        assert job is not None and job.prompt == prompt and job.lyrics == f"{prompt} lyrics"
    assert await store.erase_old_text(90) == 0  # nothing left to erase


async def test_retention_zero_keeps_everything(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    job_id = await _job(store, "kept", JobStatus.DELIVERED)
    clock.advance(3650 * DAY)
    report = await sweep(store, tmp_path / "work", retention_days=0)
    assert report.erased_jobs == 0
    job = await store.get_job(job_id)
    assert job is not None and job.prompt == "kept"


def _make_leftovers(work: Path, ended: int, running: int) -> dict[str, Path]:
    paths = {
        "ended": work / f"job-{ended}",
        "running": work / f"job-{running}",
        "unknown": work / "job-987654",
        "old_part": work / "download.mp3.part",
        "new_part": work / "fresh.wav.part",
        "other": work / "README.txt",
    }
    for name in ("ended", "running", "unknown"):
        paths[name].mkdir(parents=True)
        (paths[name] / "song.wav").write_bytes(b"RIFF")
    for name in ("old_part", "new_part", "other"):
        paths[name].write_bytes(b"x")
    stale = time.time() - STALE_PART_S - 60
    os.utime(paths["old_part"], (stale, stale))
    return paths


async def test_leftovers_of_ended_or_unknown_jobs_are_removed_and_running_ones_kept(
    store: Store, tmp_path: Path
) -> None:
    ended = await _job(store, "ended", JobStatus.CANCELLED)
    running = await _job(store, "running", JobStatus.GENERATING)
    work = tmp_path / "work"
    paths = await asyncio.to_thread(_make_leftovers, work, ended, running)
    report = await sweep(store, work, retention_days=90)
    assert report.removed_paths == 3
    exists = await asyncio.to_thread(lambda: {name: path.exists() for name, path in paths.items()})
    assert exists == {
        "ended": False,
        "unknown": False,
        "old_part": False,
        "running": True,
        "new_part": True,
        "other": True,
    }
    assert (await sweep(store, tmp_path / "missing", retention_days=90)).removed_paths == 0


async def test_the_bot_sweeps_at_start(tmp_path: Path) -> None:
    """The real bot, on a database that holds a song finished two days ago and its leftover folder: with
    SONGBOT_RETENTION_DAYS=1 the text is gone and the folder removed soon after start, with no command."""
    db = tmp_path / "songbot.db"
    past = FakeClock(datetime.now(UTC) - timedelta(days=2))
    store = await Store.open(f"sqlite+aiosqlite:///{db}", clock=past)
    try:
        old = await _job(store, "two days old", JobStatus.DELIVERED)
    finally:
        await store.close()
    leftover = tmp_path / "data" / "work" / f"job-{old}"
    await asyncio.to_thread(leftover.mkdir, parents=True)
    async with running_bot(tmp_path, SONGBOT_RETENTION_DAYS="1") as h:
        for _ in range(200):
            job = await h.store.get_job(old)
            if job is not None and job.prompt is None and not await asyncio.to_thread(leftover.exists):
                break
            await asyncio.sleep(0.05)
        job = await h.store.get_job(old)
        assert job is not None and job.prompt is None and job.lyrics is None
        assert not await asyncio.to_thread(leftover.exists)
