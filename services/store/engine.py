"""The database engine and its two kinds of transaction, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Write transactions exclude each other, so a check followed by a write (quota check, then reservation) can never
interleave with another one:

* SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of the transaction (not at the first
  write, which is where a plain ``BEGIN`` would fail with "database is locked" or let two checks pass), and an
  in-process :class:`asyncio.Lock` queues this process's writers so they don't spin on SQLite's busy handler.
  WAL mode lets readers carry on while one writer works.
* PostgreSQL: ``pg_advisory_xact_lock`` on one fixed key, released at commit or rollback. Writes are small and
  rare (a few per song), so one lock for all of them is cheaper to reason about than row locks on rows that may
  not exist yet (today's usage) or on aggregates (a server's total, the global budget). Every transaction runs at
  READ COMMITTED, pinned on the engine whatever the server's ``default_transaction_isolation``: each statement after
  the lock sees what the previous writer committed. (Under REPEATABLE READ the snapshot could predate the lock, and
  a check would read totals from before the last reservation; SERIALIZABLE would fail writers instead.)

Read transactions take no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.errors import ConfigError

#: The advisory lock key every PostgreSQL write transaction takes ("songbot" in ASCII, as a number).
PG_WRITE_LOCK_KEY = 0x736F6E67626F74
#: The isolation level the write lock above relies on (PostgreSQL).
PG_ISOLATION_LEVEL = "READ COMMITTED"
#: How long a SQLite writer waits for another process's write lock before failing, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "songbot_write"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 driver (its legacy mode skips BEGIN before SELECT), so ours is the only one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database or another back end."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(url: str, *, search_path: str | None = None) -> AsyncEngine:
    """An engine for ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``.

    ``search_path`` (PostgreSQL only) puts songbot's tables in that schema, e.g. one schema per test.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL; use sqlite+aiosqlite:///path or postgresql+asyncpg://..."
        ) from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver == "aiosqlite":
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        return engine
    if backend == "postgresql" and driver == "asyncpg":
        connect_args: dict[str, Any] = {}
        if search_path:
            connect_args["server_settings"] = {"search_path": search_path}
        return create_async_engine(
            parsed, connect_args=connect_args, pool_pre_ping=True, isolation_level=PG_ISOLATION_LEVEL
        )
    raise ConfigError(f"DATABASE_URL must use sqlite+aiosqlite or postgresql+asyncpg; got {backend}+{driver}.")


class Database:
    """An engine plus the locking rules above. One per process, opened at start and disposed at shutdown."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.backend = engine.dialect.name
        self._local_writer = asyncio.Lock() if self.backend == "sqlite" else None

    @classmethod
    async def connect(cls, url: str, *, search_path: str | None = None) -> Database:
        path = sqlite_path(url)
        if path is not None:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        # Off the loop: building a SQLite engine resolves the file's absolute path (a file-system call).
        return cls(await asyncio.to_thread(create_engine, url, search_path=search_path))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction no other writer runs alongside; commits on exit, rolls back on an exception."""
        if self._local_writer is None:
            async with self._write() as conn:
                yield conn
            return
        async with self._local_writer, self._write() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                if self.backend == "postgresql":
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITE_LOCK_KEY})
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A consistent snapshot for reading; never blocks writers on PostgreSQL or in WAL mode."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
