"""Start-up: what the bot checks and cleans before it connects, and the database's pinned isolation level."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from services.store.engine import Database
from tests.store_fixtures import DbTarget, db_target_fixture  # noqa: F401


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
