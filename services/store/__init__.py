"""Persistence: SQLAlchemy 2 asyncio Core on SQLite (aiosqlite) or PostgreSQL (asyncpg), versioned migrations."""

from services.store.records import (
    TERMINAL,
    AuditEntry,
    JobRecord,
    JobStateError,
    JobStatus,
    JobUpdate,
    MemberTotals,
    Reservation,
    ReservationState,
    Totals,
)
from services.store.repo import DM_GUILD, Tx
from services.store.store import SettingsChange, Store

__all__ = [
    "DM_GUILD",
    "TERMINAL",
    "AuditEntry",
    "JobRecord",
    "JobStateError",
    "JobStatus",
    "JobUpdate",
    "MemberTotals",
    "Reservation",
    "ReservationState",
    "SettingsChange",
    "Store",
    "Totals",
    "Tx",
]
