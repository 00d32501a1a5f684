"""What the store hands back: plain frozen records, never database rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import TypedDict

from services.errors import SongbotError


class JobStatus(StrEnum):
    """A job's place in its lifecycle (see services/jobs.py); the last four are terminal."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    GENERATING = "generating"
    PROCESSING = "processing"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.DELIVERED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}
)
#: The forward order of the non-terminal states; a job never moves back in it.
PROGRESS: tuple[JobStatus, ...] = (
    JobStatus.ACCEPTED,
    JobStatus.QUEUED,
    JobStatus.GENERATING,
    JobStatus.PROCESSING,
    JobStatus.DELIVERING,
)


class ReservationState(StrEnum):
    HELD = "held"
    COMMITTED = "committed"
    REFUNDED = "refunded"


class JobStateError(SongbotError):
    """A transition the lifecycle forbids (from a terminal state, or backwards), or an unknown job."""

    def __init__(self, message: str, *, job_id: int, status: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class JobUpdate(TypedDict, total=False):
    """Fields a transition may set along with the status."""

    request_id: str | None
    duration_s: float | None
    url: str | None
    url_expires_at: datetime | None
    channel_id: int
    message_id: int | None
    error_code: str | None
    error_id: str | None


@dataclass(frozen=True)
class JobRecord:
    id: int
    guild_id: int | None
    channel_id: int
    user_id: int | None
    prompt: str | None
    lyrics: str | None
    options: dict[str, object]
    status: JobStatus
    request_id: str | None
    duration_s: float | None
    url: str | None
    url_expires_at: datetime | None
    message_id: int | None
    error_code: str | None
    error_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: The command's interaction token while the job runs (it edits the member's message for 15 minutes); never
    #: shown in a repr or a log line.
    interaction_token: str | None = field(default=None, repr=False)

    def url_if_valid(self, now: datetime) -> str | None:
        """The audio url while it has not expired (a url without a known expiry is not offered)."""
        if self.url and self.url_expires_at and now < self.url_expires_at:
            return self.url
        return None

    def jump_url(self) -> str | None:
        """A link to the result message, when one was posted. Kept for ``cogs/song.py`` only, until it calls
        ``cogs/_words.py``'s :func:`jump_url` (the one the other cogs use)."""
        if self.message_id is None:
            return None
        guild = self.guild_id if self.guild_id is not None else "@me"
        return f"https://discord.com/channels/{guild}/{self.channel_id}/{self.message_id}"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int | None
    at: datetime
    action: str
    key: str | None
    before: object
    after: object


@dataclass(frozen=True)
class Totals:
    """Songs and seconds of audio counted for some scope and day (held reservations included)."""

    songs: int = 0
    seconds: int = 0


@dataclass(frozen=True)
class MemberTotals:
    """One member's use in a server on a day; ``user_id`` is None once they deleted their data."""

    user_id: int | None
    songs: int
    seconds: int


@dataclass(frozen=True)
class Reservation:
    job_id: int
    guild_id: int
    member_key: str
    day: date
    songs: int
    seconds: int
    state: ReservationState
    billed_seconds: int = 0  # what DashScope billed for the job (the operator's budget), refunded or not
