"""The tables as the code reads and writes them today (the current schema).

The database itself is built only by the numbered migrations in :mod:`services.store.migrations`; these
definitions must describe the schema those migrations produce. ``tests/services/store/test_store.py`` checks that
they agree.
Times are stored as naive UTC ``DATETIME``/``TIMESTAMP`` on both back ends and come back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stores timezone-aware datetimes as naive UTC and returns them aware (UTC) again."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use a timezone-aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(50), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

guild_settings = sa.Table(
    "guild_settings",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(50), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.BigInteger, nullable=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("guild_id", sa.BigInteger, nullable=False),
    sa.Column("actor_id", sa.BigInteger, nullable=True),  # NULL once the actor asked for their data to be deleted
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("action", sa.String(30), nullable=False),
    sa.Column("key", sa.String(50), nullable=True),
    sa.Column("before", sa.Text, nullable=True),  # JSON
    sa.Column("after", sa.Text, nullable=True),  # JSON
    sa.Index("ix_audit_log_guild_at", "guild_id", "at"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("guild_id", sa.BigInteger, nullable=True),  # NULL: a direct message
    sa.Column("channel_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=True),  # NULL once the member's data was deleted
    sa.Column("member_key", sa.String(64), nullable=False),  # salted hash of user_id; survives deletion
    sa.Column("prompt", sa.Text, nullable=True),
    sa.Column("lyrics", sa.Text, nullable=True),
    sa.Column("options", sa.Text, nullable=True),  # JSON
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("request_id", sa.String(100), nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("url_expires_at", UTCDateTime, nullable=True),
    sa.Column("message_id", sa.BigInteger, nullable=True),
    sa.Column("error_code", sa.String(100), nullable=True),
    sa.Column("error_id", sa.String(32), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    # the member deleted their data while the job ran: its owner id is erased when it ends (v2)
    sa.Column("erase_on_finish", sa.Boolean, nullable=False, server_default=sa.false()),
    # while the job runs: its interaction token, to edit its message after a restart (v3)
    sa.Column("interaction_token", sa.Text, nullable=True),
    sa.Index("ix_jobs_user_created", "user_id", "created_at"),
    sa.Index("ix_jobs_member_created", "guild_id", "member_key", "created_at"),
    sa.Index("ix_jobs_status", "status"),
    sa.Index("ix_jobs_guild_status", "guild_id", "status"),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),  # 0: direct messages
    sa.Column("member_key", sa.String(64), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=True),  # for display only; NULL once anonymised
    sa.Column("songs", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Integer, nullable=False),
    sa.Index("ix_usage_day_guild", "day", "guild_id"),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
    sa.Column("guild_id", sa.BigInteger, nullable=False),
    sa.Column("member_key", sa.String(64), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("songs", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # held / committed / refunded
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # what DashScope billed for the job over all its attempts, refunded or not; 0 while held (v2)
    sa.Column("billed_seconds", sa.Integer, nullable=False, server_default="0"),
)
