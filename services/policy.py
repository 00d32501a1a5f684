"""The ordered enforcement chain: may this member make a song here, now? Checked before any API call.

The order, first refusal wins (each a :class:`RefusalReason` with the data its sentence in ``cogs/_words.py``
needs):

1. disabled — the server turned ``/song`` off;
2. channel not allowed — the server lists channels and this isn't one;
3. role not allowed — the server lists roles, the member has none of them, and lacks Manage Server;
4. cooldown — ``cooldown`` seconds since this member's last song in this server; ``retry_at`` is when it ends;
5. member daily quota (songs);
6. server daily quota: songs, then minutes of audio;
7. the operator's global daily budget (seconds of audio per UTC day, all servers together; None = unlimited);
8. queue full: this server already has ``max_queued`` songs waiting (jobs admitted but not started, counted in the
   database, so every process sharing it agrees), or the process's global bound (``SONGBOT_QUEUE_SIZE``) is reached.
   Either refusal says when to try again (about one song's generation time from now).
9. member busy: the member already has ``MAX_JOBS_PER_MEMBER`` songs queued or generating (or being admitted), so
   one member cannot fill the shared queue; checked between the two queue bounds.

Admission checks all of that and, in the same write transaction, creates the job (status ``accepted``) and
reserves 1 song plus the estimated seconds, so concurrent requests can never overspend a quota. Reserved but
unsettled use counts as used. :meth:`Policy.settle` replaces the estimate with the real seconds;
:meth:`Policy.refund` gives everything back (failure, cancel, interruption) and is idempotent.

The operator's global budget counts what DashScope *billed*, not what was delivered: both ``settle`` and
``refund`` record the seconds the service generated for the job over all its attempts (a cancel after audio
arrived, retries that streamed audio, a failure after the stream finished all cost money). A refund gives the
member and the server their quota back, never the operator's budget. A running job counts its estimate.

Days are UTC days from the injected clock; a reservation is counted on the day its job was accepted.

Direct messages (``guild_id`` None) have no server settings: only the member quota (the default
``member_daily_songs``, counted under server id 0), the global budget and the queue apply.

Cooldown: measured from the moment a job was accepted. A job that *failed* or was *interrupted* does not hold
the cooldown (the member got nothing, through no choice of theirs, and may try again at once); a *cancelled* job
does (otherwise start-and-cancel would sidestep it). Settings are read on every request, so a moderator's change
applies to the very next one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Protocol

from services.clock import Clock, utc_day
from services.errors import PolicyRefusal
from services.guild_settings import DEFAULTS, GuildSettings
from services.store import DM_GUILD, MemberTotals, Store, Tx

#: Songs one member may have queued or generating at once, so one member cannot fill the shared queue.
MAX_JOBS_PER_MEMBER = 2


class RefusalReason(StrEnum):
    DISABLED = "disabled"
    CHANNEL = "channel"
    ROLE = "role"
    COOLDOWN = "cooldown"
    MEMBER_QUOTA = "member_quota"
    SERVER_SONGS = "server_songs"
    SERVER_MINUTES = "server_minutes"
    GLOBAL_BUDGET = "global_budget"
    QUEUE_FULL = "queue_full"
    MEMBER_BUSY = "member_busy"


class QueuePlace(Protocol):
    """A request's place in the job queue (``services.jobs.Place``), claimed inside :meth:`Policy.admit`'s write
    transaction, which excludes other admissions."""

    def member_songs(self) -> int:
        """The member's songs queued or generating, counting their requests still being admitted."""
        ...

    def claim(self) -> bool:
        """If the queue has room, claim a place in it; True once claimed."""
        ...


@dataclass(frozen=True)
class RequestContext:
    guild_id: int | None
    channel_id: int
    user_id: int
    role_ids: Sequence[int]
    is_manager: bool  # has Manage Server: exempt from role limits (and nothing else)
    estimated_seconds: int


@dataclass(frozen=True)
class Admission:
    """An accepted request: its job row and what was reserved for it."""

    job_id: int
    guild_id: int | None
    user_id: int
    day: date
    reserved_songs: int
    reserved_seconds: int
    accepted_at: datetime
    settings: GuildSettings


@dataclass(frozen=True)
class MemberUsage:
    day: date
    songs_used: int
    songs_limit: int
    songs_left: int
    seconds_used: int
    resets_at: datetime


@dataclass(frozen=True)
class ServerUsage:
    day: date
    songs_used: int
    songs_limit: int
    songs_left: int
    seconds_used: int
    seconds_limit: int
    seconds_left: int
    resets_at: datetime
    top: list[MemberTotals] = field(default_factory=list)


@dataclass(frozen=True)
class GlobalUsage:
    """Today's use across every server. ``seconds_used``: audio delivered to members; ``billed_seconds``: what
    DashScope billed (refunded jobs and retries included, running jobs at their estimate), which the budget counts."""

    day: date
    songs_used: int
    seconds_used: int
    seconds_limit: int | None
    seconds_left: int | None
    resets_at: datetime
    billed_seconds: int = 0


def next_utc_midnight(now: datetime) -> datetime:
    return datetime.combine(utc_day(now) + timedelta(days=1), time(0), UTC)


def _epoch(moment: datetime) -> int:
    return math.ceil(moment.timestamp())


class Policy:
    """The enforcement chain and quota bookkeeping. One per bot, sharing the store and the clock."""

    def __init__(self, store: Store, clock: Clock, *, global_daily_seconds: int | None) -> None:
        self._store = store
        self._clock = clock
        self._global_daily_seconds = global_daily_seconds

    async def admit(
        self,
        ctx: RequestContext,
        *,
        prompt: str | None,
        lyrics: str | None,
        options: Mapping[str, object],
        place: QueuePlace,
        interaction_token: str | None = None,
    ) -> Admission:
        """Check the chain; on success create the job and reserve its quota atomically.

        ``interaction_token`` is kept on the job while it runs, so a restart can edit the member's message.

        Raises :class:`PolicyRefusal` (``reason`` a :class:`RefusalReason`, ``retry_at`` epoch seconds when the
        refusal ends by itself) and writes nothing then.
        """
        now = self._clock.now()
        day = utc_day(now)
        seconds = max(0, ctx.estimated_seconds)
        async with self._store.write() as tx:
            if ctx.guild_id is None:
                settings = DEFAULTS
            else:
                settings = await tx.settings(ctx.guild_id)
                self._check_access(ctx, settings)
                await self._check_cooldown(tx, ctx, settings, now)
            await self._check_quotas(tx, ctx, settings, now, seconds)
            retry = now + timedelta(seconds=max(60, ctx.estimated_seconds))
            if ctx.guild_id is not None and await tx.waiting_jobs(ctx.guild_id) >= settings.max_queued:
                raise PolicyRefusal(RefusalReason.QUEUE_FULL, retry_at=_epoch(retry), limit=settings.max_queued)
            if place.member_songs() >= MAX_JOBS_PER_MEMBER:
                raise PolicyRefusal(RefusalReason.MEMBER_BUSY, limit=MAX_JOBS_PER_MEMBER)
            if not place.claim():
                raise PolicyRefusal(RefusalReason.QUEUE_FULL, retry_at=_epoch(retry))
            job_id = await tx.insert_job(
                guild_id=ctx.guild_id,
                channel_id=ctx.channel_id,
                user_id=ctx.user_id,
                prompt=prompt,
                lyrics=lyrics,
                options=options,
                interaction_token=interaction_token,
            )
            await tx.reserve(job_id, self._usage_guild(ctx.guild_id), ctx.user_id, day, 1, seconds)
        return Admission(job_id, ctx.guild_id, ctx.user_id, day, 1, seconds, now, settings)

    @staticmethod
    def _usage_guild(guild_id: int | None) -> int:
        return DM_GUILD if guild_id is None else guild_id

    @staticmethod
    def _check_access(ctx: RequestContext, settings: GuildSettings) -> None:
        if not settings.enabled:
            raise PolicyRefusal(RefusalReason.DISABLED)
        if settings.channels and ctx.channel_id not in settings.channels:
            raise PolicyRefusal(RefusalReason.CHANNEL, ids=settings.channels)
        if settings.roles and not ctx.is_manager and not set(ctx.role_ids) & set(settings.roles):
            raise PolicyRefusal(RefusalReason.ROLE, ids=settings.roles)

    @staticmethod
    async def _check_cooldown(tx: Tx, ctx: RequestContext, settings: GuildSettings, now: datetime) -> None:
        if settings.cooldown <= 0:
            return
        last = await tx.last_start(ctx.guild_id, ctx.user_id)
        if last is None:
            return
        ends = last + timedelta(seconds=settings.cooldown)
        if now < ends:
            raise PolicyRefusal(RefusalReason.COOLDOWN, retry_at=_epoch(ends))

    async def _check_quotas(
        self, tx: Tx, ctx: RequestContext, settings: GuildSettings, now: datetime, seconds: int
    ) -> None:
        day = utc_day(now)
        retry_at = _epoch(next_utc_midnight(now))
        guild = self._usage_guild(ctx.guild_id)
        member = await tx.member_totals(guild, ctx.user_id, day)
        if member.songs + 1 > settings.member_daily_songs:
            raise PolicyRefusal(
                RefusalReason.MEMBER_QUOTA,
                retry_at=retry_at,
                limit=settings.member_daily_songs,
                direct=ctx.guild_id is None,
            )
        if ctx.guild_id is not None:
            server = await tx.guild_totals(ctx.guild_id, day)
            if server.songs + 1 > settings.server_daily_songs:
                raise PolicyRefusal(RefusalReason.SERVER_SONGS, retry_at=retry_at, limit=settings.server_daily_songs)
            limit = settings.server_daily_minutes * 60
            if server.seconds + seconds > limit:
                raise PolicyRefusal(
                    RefusalReason.SERVER_MINUTES,
                    retry_at=retry_at,
                    limit=settings.server_daily_minutes,
                    left=max(0, limit - server.seconds),
                    needed=seconds,
                )
        budget = self._global_daily_seconds
        if budget is not None:
            billed = await tx.global_billed(day)
            if billed + seconds > budget:
                raise PolicyRefusal(
                    RefusalReason.GLOBAL_BUDGET, retry_at=retry_at, left=max(0, budget - billed), needed=seconds
                )

    async def settle(self, job_id: int, actual_seconds: float, billed_seconds: float | None = None) -> bool:
        """Commit a delivered job's real use (its estimate replaced by ``actual_seconds``, rounded up), and what
        DashScope billed for it over all attempts (``billed_seconds``, default the same) on the operator's budget.

        False when there was nothing held (already settled, or refunded)."""
        async with self._store.write() as tx:
            return await tx.settle(job_id, actual_seconds, billed_seconds)

    async def refund(self, job_id: int, billed_seconds: float = 0) -> bool:
        """Give back a job's song and seconds (failure, cancel, interruption) to the member and the server; what
        DashScope billed (``billed_seconds``) stays on the operator's budget. Idempotent: False the second time."""
        async with self._store.write() as tx:
            return await tx.refund(job_id, billed_seconds)

    async def member_usage(self, guild_id: int | None, user_id: int) -> MemberUsage:
        """A member's use today in a server (or in DMs, ``guild_id`` None) and what is left."""
        now = self._clock.now()
        day = utc_day(now)
        async with self._store.read() as tx:
            settings = DEFAULTS if guild_id is None else await tx.settings(guild_id)
            used = await tx.member_totals(self._usage_guild(guild_id), user_id, day)
        limit = settings.member_daily_songs
        return MemberUsage(day, used.songs, limit, max(0, limit - used.songs), used.seconds, next_utc_midnight(now))

    async def server_usage(self, guild_id: int, *, top: int = 5) -> ServerUsage:
        """A server's use today against its limits, with its ``top`` members by songs."""
        now = self._clock.now()
        day = utc_day(now)
        async with self._store.read() as tx:
            settings = await tx.settings(guild_id)
            used = await tx.guild_totals(guild_id, day)
            leaders = await tx.top_members(guild_id, day, top)
        songs_limit = settings.server_daily_songs
        seconds_limit = settings.server_daily_minutes * 60
        return ServerUsage(
            day=day,
            songs_used=used.songs,
            songs_limit=songs_limit,
            songs_left=max(0, songs_limit - used.songs),
            seconds_used=used.seconds,
            seconds_limit=seconds_limit,
            seconds_left=max(0, seconds_limit - used.seconds),
            resets_at=next_utc_midnight(now),
            top=leaders,
        )

    async def global_usage(self) -> GlobalUsage:
        """Today's use across all servers against the operator's budget."""
        now = self._clock.now()
        day = utc_day(now)
        async with self._store.read() as tx:
            used = await tx.global_totals(day)
            billed = await tx.global_billed(day)
        budget = self._global_daily_seconds
        left = None if budget is None else max(0, budget - billed)
        return GlobalUsage(day, used.songs, used.seconds, budget, left, next_utc_midnight(now), billed)

    async def cooldown_ends(self, guild_id: int, user_id: int) -> datetime | None:
        """When this member's cooldown in a server ends, or None when they are not on cooldown."""
        now = self._clock.now()
        async with self._store.read() as tx:
            settings = await tx.settings(guild_id)
            last = await tx.last_start(guild_id, user_id)
        if settings.cooldown <= 0 or last is None:
            return None
        ends = last + timedelta(seconds=settings.cooldown)
        return ends if now < ends else None
