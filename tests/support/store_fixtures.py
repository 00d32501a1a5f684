"""Store fixtures, loaded for every test by ``pytest_plugins`` in tests/conftest.py: ``clock``, ``db_target`` and
``store`` (the ``*_fixture`` function names keep ruff's F811 quiet in modules that also import from here).

``store`` is a real :class:`Store` on a SQLite file in ``tmp_path``, and — when ``TEST_DATABASE_URL`` is set
(``postgresql+asyncpg://postgres@127.0.0.1:5432/test`` in CI) — the same test runs again on PostgreSQL, in a
fresh schema created for the test and dropped after it, so runs never see each other's rows. ``db_target``
opens more stores on the same database (to test reopening, or two processes at once). ``clock`` is the
:class:`FakeClock` the store was opened with; a test file may override it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from blockbuster import BlockBuster
from sqlalchemy.ext.asyncio import create_async_engine

from services.clock import Clock
from services.store import Store
from tests.support.clock import FakeClock

PG_URL = os.environ.get("TEST_DATABASE_URL", "").strip()

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="TEST_DATABASE_URL is not set"),
    ),
]


@dataclass(frozen=True)
class DbTarget:
    """One test's database: where it is, and how to open a store on it."""

    backend: str
    url: str
    search_path: str | None = None

    async def open(self, clock: Clock) -> Store:
        return await Store.open(self.url, clock=clock, search_path=self.search_path)


async def _pg_schema(sql: str) -> None:
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


def allow_asyncpg_connect_lookups(blockbuster: BlockBuster) -> None:
    """asyncpg looks for ``~/.pgpass`` and client TLS files (a stat or two) while opening each connection, on the
    event loop. That is the driver's one-off connect-time configuration, not songbot code blocking the loop."""
    for function in blockbuster.functions.values():
        function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")


@pytest.fixture(name="db_target", params=BACKENDS)
async def db_target_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, blockbuster: BlockBuster
) -> AsyncIterator[DbTarget]:
    if request.param == "sqlite":
        yield DbTarget("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'db' / 'songbot.db'}")
        return
    allow_asyncpg_connect_lookups(blockbuster)
    schema = f"test_{secrets.token_hex(6)}"
    await _pg_schema(f'CREATE SCHEMA "{schema}"')
    try:
        yield DbTarget("postgresql", PG_URL, schema)
    finally:
        await _pg_schema(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(name="store")
async def store_fixture(db_target: DbTarget, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await db_target.open(clock)
    try:
        yield opened
    finally:
        await opened.close()
