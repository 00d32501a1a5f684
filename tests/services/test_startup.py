"""Start-up: what the bot checks and cleans before it connects, and the database's pinned isolation level."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.clock import SystemClock
from services.offline.discord import FakeDiscord
from services.store.engine import Database
from services.store.migrations import LATEST, migrate, v0001_initial
from services.store.schema import schema_version
from tests.support.clock import FakeClock
from tests.support.e2e import TOKEN, e2e_env
from tests.support.processes import bot_process, broken_ffmpeg_path, run_bot_command
from tests.support.sim_fixtures import SIM_KEY, running_simulator
from tests.support.store_fixtures import DbTarget


async def test_postgresql_transactions_are_read_committed_whatever_the_server_default(
    db_target: DbTarget,
) -> None:
    """The write lock is taken by the transaction's first statement: under REPEATABLE READ (an operator's
    ``default_transaction_isolation``) the snapshot would predate the lock and a quota check would miss the last
    reservation; the engine pins READ COMMITTED."""
    if db_target.backend != "postgresql":
        pytest.skip("PostgreSQL only")
    db = await Database.connect(db_target.url, search_path=db_target.search_path)
    try:
        engine = db.engine

        def stricter_server_default(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.run_async(
                lambda conn: conn.execute("SET SESSION default_transaction_isolation = 'repeatable read'")
            )

        sa.event.listen(engine.sync_engine, "connect", stricter_server_default)
        await engine.dispose()  # new connections, with the stricter default
        async with db.write() as tx:
            assert await tx.scalar(sa.text("SHOW transaction_isolation")) == "read committed"
        async with db.read() as tx:
            assert await tx.scalar(sa.text("SHOW transaction_isolation")) == "read committed"
    finally:
        await db.dispose()


# --- `python bot.py` as a child process: each start problem is one sentence, before Discord is contacted ---------


async def start_fails(env: dict[str, str]) -> tuple[int, str]:
    """Run ``python bot.py`` (logging at INFO, as operators do) until it exits; returns (exit code, output)."""
    code, out, err = await run_bot_command(env={**env, "LOG_LEVEL": "INFO"})
    return code, out + err


def one_sentence(output: str, start: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in output, output
    assert errors[0].startswith(f"error: {start}"), output
    assert " WARNING " not in output and " ERROR " not in output, output
    assert TOKEN not in output and SIM_KEY not in output
    return errors[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_broken_ffmpeg_stops_the_start(tmp_path: Path) -> None:
    path = await broken_ffmpeg_path(tmp_path / "bin", "error while loading shared libraries: libavdevice.so.60")
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        env = e2e_env(sim, fake, tmp_path, PATH=path)
        code, output = await start_fails(env)
        assert code == 1
        line = one_sentence(output, "ffmpeg does not run")
        assert "libavdevice" in line
        assert not fake.requests  # checked before connecting


async def test_an_unreachable_database_stops_the_start(tmp_path: Path) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        port = closed_port()
        env = e2e_env(sim, fake, tmp_path, DATABASE_URL=f"postgresql+asyncpg://songbot:pw-secret@127.0.0.1:{port}/x")
        code, output = await start_fails(env)
        assert code == 1
        line = one_sentence(output, f"Cannot open the database (PostgreSQL at 127.0.0.1:{port}/x)")
        assert "pw-secret" not in line and "DATABASE_URL" in line
        assert not fake.requests


async def test_a_database_from_a_newer_songbot_stops_the_start(tmp_path: Path) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        env = e2e_env(sim, fake, tmp_path)
        db = await Database.connect(env["DATABASE_URL"])
        try:
            async with db.write() as conn:
                await migrate(conn, SystemClock().now())
                await conn.execute(
                    schema_version.insert().values(version=LATEST + 1, name="future", applied_at=SystemClock().now())
                )
        finally:
            await db.dispose()
        code, output = await start_fails(env)
        assert code == 1
        one_sentence(output, f"The database is at schema version {LATEST + 1}")
        assert not fake.requests


async def test_an_unwritable_work_folder_stops_the_start(tmp_path: Path) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        data = tmp_path / "data"
        await asyncio.to_thread(
            data.write_text, "a file where the data folder should be"
        )  # (tests may run as root: modes would not stop it)
        code, output = await start_fails(e2e_env(sim, fake, tmp_path, SONGBOT_DATA_DIR=str(data)))
        assert code == 1
        one_sentence(output, f"The work folder {data / 'work'} is not writable")
        assert not fake.requests


async def test_an_unreachable_discord_is_one_sentence(tmp_path: Path) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        base = f"http://127.0.0.1:{closed_port()}/api/v10"
        code, output = await start_fails(e2e_env(sim, fake, tmp_path, DISCORD_API_BASE=base))
        assert code == 1
        line = one_sentence(output, f"Cannot reach Discord at {base}")
        assert "DISCORD_API_BASE" in line
        # a server that is not Discord's API (here: the right host, a wrong path)
        wrong = f"{fake.base_url}/api/v9"
        code, output = await start_fails(e2e_env(sim, fake, tmp_path, DISCORD_API_BASE=wrong))
        assert code == 1
        one_sentence(output, f"Discord at {wrong} answered HTTP 404")


async def test_a_clean_start_warns_about_nothing(tmp_path: Path) -> None:
    """No PyNaCl/davey warnings (songbot uses no voice), nor anything else the operator need not act on."""
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        env = e2e_env(sim, fake, tmp_path, LOG_LEVEL="INFO")
        async with bot_process(env) as bot:
            await fake.wait_connected(timeout=30)
            bot.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.proc.wait(), 30) == 0, bot.text
        assert "synced" in bot.text and "stopping" in bot.text
        warnings = [line for line in bot.lines if "WARNING" in line or "PyNaCl" in line or "davey" in line]
        assert not warnings, bot.text


async def test_a_version_1_database_with_a_running_job_is_migrated_and_recovered(db_target: DbTarget) -> None:
    """An operator upgrading songbot while a song was being made: version 2 adds the token column, empty."""
    clock = FakeClock()
    db = await Database.connect(db_target.url, search_path=db_target.search_path)
    try:
        async with db.write() as conn:
            await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
            await conn.run_sync(v0001_initial.upgrade)
            await conn.execute(schema_version.insert().values(version=1, name="initial", applied_at=clock.now()))
            await conn.execute(
                sa.text(
                    "INSERT INTO jobs (guild_id, channel_id, user_id, member_key, options, status, created_at, "
                    "updated_at) VALUES (1, 2, 3, 'k', '{}', 'generating', :at, :at)"
                ),
                {"at": clock.now().replace(tzinfo=None)},
            )
    finally:
        await db.dispose()
    store = await db_target.open(clock)
    try:
        assert await store.schema_version() == LATEST
        (job,) = await store.recover_interrupted()
        assert job.status == "interrupted" and job.user_id == 3 and job.interaction_token is None
    finally:
        await store.close()
