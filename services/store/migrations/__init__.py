"""Numbered schema migrations, applied in order when the store opens.

Each migration is a module ``vNNNN_<name>.py`` with ``NAME`` and a synchronous ``upgrade(connection)`` that runs
inside the store's write transaction (PostgreSQL and SQLite both have transactional DDL), so a failed migration
leaves the database at the previous version. ``schema_version`` records one row per applied version. To change
the schema: add the next module, list it in ``MIGRATIONS``, and update :mod:`services.store.schema` to match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from services.errors import ConfigError
from services.store.migrations import v0001_initial, v0002_billing_and_erasure, v0003_interaction_token
from services.store.schema import schema_version


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    upgrade: Callable[[Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, v0001_initial.NAME, v0001_initial.upgrade),
    Migration(2, v0002_billing_and_erasure.NAME, v0002_billing_and_erasure.upgrade),
    Migration(3, v0003_interaction_token.NAME, v0003_interaction_token.upgrade),
)
LATEST = MIGRATIONS[-1].version


def _check_sequence() -> None:
    expected = list(range(1, len(MIGRATIONS) + 1))
    if [m.version for m in MIGRATIONS] != expected:
        raise AssertionError("migrations must be numbered 1, 2, 3, ... without gaps")


_check_sequence()


async def current_version(conn: AsyncConnection) -> int:
    """The highest applied version, 0 for an empty database."""
    exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("schema_version"))
    if not exists:
        return 0
    version = await conn.scalar(sa.select(sa.func.max(schema_version.c.version)))
    return int(version or 0)


async def migrate(conn: AsyncConnection, now: datetime) -> list[int]:
    """Bring the database to :data:`LATEST`; returns the versions applied (empty when already current).

    ``conn`` must be inside a write transaction that excludes other writers (the store's ``write()``), so two
    bots starting on one database cannot both apply a migration.
    """
    await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
    current = await current_version(conn)
    if current > LATEST:
        raise ConfigError(
            f"The database is at schema version {current}, newer than this songbot knows ({LATEST}); "
            "upgrade songbot or point DATABASE_URL at another database."
        )
    applied: list[int] = []
    for migration in MIGRATIONS[current:]:
        await conn.run_sync(migration.upgrade)
        await conn.execute(
            schema_version.insert().values(version=migration.version, name=migration.name, applied_at=now)
        )
        applied.append(migration.version)
    return applied
