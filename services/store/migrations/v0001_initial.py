"""Version 1: settings overrides, audit log, jobs, usage, reservations, and the salt for member keys.

Frozen: these definitions describe version 1 forever. A later change is a new module (``v0002_...``) that
alters what this one made; it never edits this file.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Connection

NAME = "initial"


def _tables(md: sa.MetaData) -> None:
    sa.Table(
        "meta",
        md,
        sa.Column("key", sa.String(50), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    sa.Table(
        "guild_settings",
        md,
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(50), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("updated_by", sa.BigInteger, nullable=True),
    )
    sa.Table(
        "audit_log",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("actor_id", sa.BigInteger, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("key", sa.String(50), nullable=True),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
        sa.Index("ix_audit_log_guild_at", "guild_id", "at"),
    )
    sa.Table(
        "jobs",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.BigInteger, nullable=True),
        sa.Column("channel_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("member_key", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=True),
        sa.Column("lyrics", sa.Text, nullable=True),
        sa.Column("options", sa.Text, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=True),
        sa.Column("duration_s", sa.Float, nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("url_expires_at", sa.DateTime, nullable=True),
        sa.Column("message_id", sa.BigInteger, nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Index("ix_jobs_user_created", "user_id", "created_at"),
        sa.Index("ix_jobs_member_created", "guild_id", "member_key", "created_at"),
        sa.Index("ix_jobs_status", "status"),
    )
    sa.Table(
        "usage",
        md,
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("member_key", sa.String(64), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("songs", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Integer, nullable=False),
        sa.Index("ix_usage_day_guild", "day", "guild_id"),
    )
    sa.Table(
        "reservations",
        md,
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("member_key", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("songs", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def upgrade(conn: Connection) -> None:
    """Create version 1's tables and the random salt that turns member ids into member keys."""
    md = sa.MetaData()
    _tables(md)
    for table in md.sorted_tables:
        table.create(conn)
    conn.execute(md.tables["meta"].insert().values(key="member_key_salt", value=secrets.token_hex(32)))
