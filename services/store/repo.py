"""The SQL, one method per question or change, all run inside a transaction the caller holds.

A :class:`Tx` wraps one connection in a read or write transaction (see :mod:`services.store.engine`). Methods
that write assume a write transaction: they read, decide and write without another writer in between, which is
what makes quota reservations atomic. :class:`services.store.store.Store` opens the transactions; the policy
uses a write ``Tx`` directly to check and reserve in one go.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.clock import Clock
from services.guild_settings import SPECS, GuildSettings, from_overrides
from services.store.records import (
    PROGRESS,
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
from services.store.schema import audit_log, guild_settings, jobs, meta, reservations, usage

log = logging.getLogger(__name__)

_TERMINAL_VALUES = tuple(s.value for s in TERMINAL)
#: Jobs in these states do not hold a cooldown: the member got nothing, through no choice of theirs.
NO_COOLDOWN_STATUSES = (JobStatus.FAILED.value, JobStatus.INTERRUPTED.value)
DM_GUILD = 0
#: Jobs waiting for a generation slot (admitted, not started): what a server's queue bound counts.
WAITING_STATUSES = (JobStatus.ACCEPTED.value, JobStatus.QUEUED.value)
#: What a member's data deletion erases from a job (the owner id too, but only once the job has ended).
_ERASED_TEXT: dict[str, object] = {"prompt": None, "lyrics": None, "options": None, "url": None, "url_expires_at": None}


def _dumps(value: object) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _loads(raw: str | None) -> object:
    return None if raw is None else json.loads(raw)


def member_key(salt: str, user_id: int) -> str:
    """A salted hash of a member id: it keeps their quota and cooldown after their data is deleted, without
    keeping who they are. The salt is random per database (``meta.member_key_salt``)."""
    return hmac.new(salt.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()


def whole_seconds(seconds: float) -> int:
    """Seconds of audio as billed: rounded up, never negative."""
    return max(0, math.ceil(seconds - 1e-9))


def _fit_job_columns(job_id: int, values: dict[str, object]) -> None:
    """Cut text longer than its ``jobs`` column (PostgreSQL would refuse the row) with a WARNING: a request id
    or error code from the service is bookkeeping, never a reason to lose the job's state."""
    for name, value in values.items():
        length = getattr(jobs.c[name].type, "length", None)
        if isinstance(value, str) and isinstance(length, int) and len(value) > length:
            log.warning("job %s: %s has %d characters, over its column's %d; cut", job_id, name, len(value), length)
            values[name] = value[:length]


def _job(row: sa.Row[Any]) -> JobRecord:
    options = _loads(row.options)
    return JobRecord(
        id=row.id,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        user_id=row.user_id,
        prompt=row.prompt,
        lyrics=row.lyrics,
        options=options if isinstance(options, dict) else {},
        status=JobStatus(row.status),
        request_id=row.request_id,
        duration_s=row.duration_s,
        url=row.url,
        url_expires_at=row.url_expires_at,
        message_id=row.message_id,
        error_code=row.error_code,
        error_id=row.error_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        interaction_token=row.interaction_token,
    )


class Tx:
    """One transaction's worth of store operations."""

    def __init__(self, conn: AsyncConnection, clock: Clock, salt: str) -> None:
        self.conn = conn
        self.clock = clock
        self._salt = salt

    def member_key(self, user_id: int) -> str:
        return member_key(self._salt, user_id)

    # --- settings -------------------------------------------------------------------------------------------

    async def overrides(self, guild_id: int) -> dict[str, object]:
        result = await self.conn.execute(
            sa.select(guild_settings.c.key, guild_settings.c.value).where(guild_settings.c.guild_id == guild_id)
        )
        return {row.key: _loads(row.value) for row in result}

    async def guilds_with_channels(self) -> dict[int, list[int]]:
        """Every server whose moderators limited /song to some channels, with those channels."""
        result = await self.conn.execute(
            sa.select(guild_settings.c.guild_id, guild_settings.c.value).where(guild_settings.c.key == "channels")
        )
        found: dict[int, list[int]] = {}
        for guild_id, raw in result:
            ids = _loads(raw)
            if isinstance(ids, list) and ids:
                found[int(guild_id)] = [int(i) for i in ids]
        return found

    async def settings(self, guild_id: int) -> GuildSettings:
        return from_overrides(await self.overrides(guild_id))

    async def save_settings(
        self, guild_id: int, actor_id: int | None, action: str, before: GuildSettings, after: GuildSettings
    ) -> None:
        """Store ``after`` as overrides (a value equal to its default is not stored) and audit each changed key."""
        now = self.clock.now()
        stored = await self.overrides(guild_id)
        for name, new in after.as_dict().items():
            old = before.value(name)
            if new == old:
                continue
            await self.conn.execute(
                audit_log.insert().values(
                    guild_id=guild_id,
                    actor_id=actor_id,
                    at=now,
                    action=action,
                    key=name,
                    before=_dumps(old),
                    after=_dumps(new),
                )
            )
            where = (guild_settings.c.guild_id == guild_id) & (guild_settings.c.key == name)
            if new == SPECS[name].default:
                await self.conn.execute(guild_settings.delete().where(where))
            elif name in stored:
                await self.conn.execute(
                    guild_settings.update().where(where).values(value=_dumps(new), updated_at=now, updated_by=actor_id)
                )
            else:
                await self.conn.execute(
                    guild_settings.insert().values(
                        guild_id=guild_id, key=name, value=_dumps(new), updated_at=now, updated_by=actor_id
                    )
                )

    async def audit(self, guild_id: int, limit: int) -> list[AuditEntry]:
        result = await self.conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.guild_id == guild_id)
            .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
            .limit(limit)
        )
        return [
            AuditEntry(
                id=row.id,
                guild_id=row.guild_id,
                actor_id=row.actor_id,
                at=row.at,
                action=row.action,
                key=row.key,
                before=_loads(row.before),
                after=_loads(row.after),
            )
            for row in result
        ]

    # --- jobs -----------------------------------------------------------------------------------------------

    async def insert_job(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        prompt: str | None,
        lyrics: str | None,
        options: Mapping[str, object],
        interaction_token: str | None = None,
    ) -> int:
        now = self.clock.now()
        result = await self.conn.execute(
            jobs.insert()
            .values(
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=user_id,
                member_key=self.member_key(user_id),
                prompt=prompt,
                lyrics=lyrics,
                options=json.dumps(dict(options)),
                status=JobStatus.ACCEPTED.value,
                created_at=now,
                updated_at=now,
                interaction_token=interaction_token,
            )
            .returning(jobs.c.id)
        )
        return int(result.scalar_one())

    async def job(self, job_id: int) -> JobRecord | None:
        row = (await self.conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job(row)

    async def transition(self, job_id: int, status: JobStatus, fields: JobUpdate) -> JobRecord:
        unknown = set(fields) - set(JobUpdate.__annotations__)
        if unknown:
            raise TypeError(f"transition() got fields it cannot set: {', '.join(sorted(unknown))}")
        current = await self.job(job_id)
        if current is None:
            raise JobStateError(f"job {job_id} does not exist", job_id=job_id, status=None)
        if current.status.terminal:
            raise JobStateError(
                f"job {job_id} is already {current.status}; it cannot become {status}",
                job_id=job_id,
                status=current.status,
            )
        if not status.terminal and PROGRESS.index(status) < PROGRESS.index(current.status):
            raise JobStateError(
                f"job {job_id} is {current.status}; it cannot go back to {status}", job_id=job_id, status=current.status
            )
        now = self.clock.now()
        values: dict[str, object] = {**fields, "status": status.value, "updated_at": now}
        if status.terminal:
            values["finished_at"] = now
            values["interaction_token"] = None  # only a running job's message is edited after a restart
        if await self.conn.scalar(sa.select(jobs.c.erase_on_finish).where(jobs.c.id == job_id)):
            # the member deleted their data while this job ran: store none of it again, and at the end drop the
            # owner id that Cancel needed until now
            values.update(_ERASED_TEXT)
            if status.terminal:
                values["user_id"] = None
        _fit_job_columns(job_id, values)
        await self.conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        updated = await self.job(job_id)
        assert updated is not None
        return updated

    async def set_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        result = await self.conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(channel_id=channel_id, message_id=message_id, updated_at=self.clock.now())
        )
        if result.rowcount == 0:
            raise JobStateError(f"job {job_id} does not exist", job_id=job_id, status=None)

    async def unfinished_jobs(self) -> list[JobRecord]:
        result = await self.conn.execute(
            sa.select(jobs).where(jobs.c.status.not_in(_TERMINAL_VALUES)).order_by(jobs.c.id)
        )
        return [_job(row) for row in result]

    async def history(self, user_id: int, guild_id: int | None, limit: int) -> list[JobRecord]:
        query = sa.select(jobs).where(jobs.c.user_id == user_id)
        if guild_id is not None:
            query = query.where(jobs.c.guild_id == guild_id)
        result = await self.conn.execute(query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit))
        return [_job(row) for row in result]

    async def last_start(self, guild_id: int | None, user_id: int) -> datetime | None:
        """When this member's most recent job that holds a cooldown was accepted in this server."""
        guild = jobs.c.guild_id.is_(None) if guild_id is None else jobs.c.guild_id == guild_id
        value = await self.conn.scalar(
            sa.select(sa.func.max(jobs.c.created_at)).where(
                guild,
                jobs.c.member_key == self.member_key(user_id),
                jobs.c.status.not_in(NO_COOLDOWN_STATUSES),
            )
        )
        return value if isinstance(value, datetime) else None

    # --- usage ----------------------------------------------------------------------------------------------

    async def _totals(self, *where: sa.ColumnElement[bool]) -> Totals:
        row = (
            await self.conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(usage.c.songs), 0), sa.func.coalesce(sa.func.sum(usage.c.seconds), 0)
                ).where(*where)
            )
        ).one()
        return Totals(songs=int(row[0]), seconds=int(row[1]))

    async def member_totals(self, guild_id: int, user_id: int, day: date) -> Totals:
        key = self.member_key(user_id)
        return await self._totals(usage.c.guild_id == guild_id, usage.c.member_key == key, usage.c.day == day)

    async def guild_totals(self, guild_id: int, day: date) -> Totals:
        return await self._totals(usage.c.guild_id == guild_id, usage.c.day == day)

    async def global_totals(self, day: date) -> Totals:
        return await self._totals(usage.c.day == day)

    async def global_billed(self, day: date) -> int:
        """Seconds of audio DashScope billed for jobs accepted on ``day``, all servers and DMs, refunded or not;
        a job still running counts its reserved estimate (so concurrent jobs cannot overspend the budget)."""
        spent = sa.case(
            (reservations.c.state == ReservationState.HELD.value, reservations.c.seconds),
            else_=reservations.c.billed_seconds,
        )
        value = await self.conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(spent), 0)).where(reservations.c.day == day)
        )
        return int(value or 0)

    async def waiting_jobs(self, guild_id: int | None) -> int:
        """A server's jobs admitted but not yet started (its queue), on every process sharing the database."""
        guild = jobs.c.guild_id.is_(None) if guild_id is None else jobs.c.guild_id == guild_id
        value = await self.conn.scalar(
            sa.select(sa.func.count()).select_from(jobs).where(guild, jobs.c.status.in_(WAITING_STATUSES))
        )
        return int(value or 0)

    async def jobs_by_status(self) -> dict[str, int]:
        """How many jobs are in each unfinished state now, on every process sharing the database (for metrics)."""
        result = await self.conn.execute(
            sa.select(jobs.c.status, sa.func.count())
            .where(jobs.c.status.not_in(_TERMINAL_VALUES))
            .group_by(jobs.c.status)
        )
        return {str(status): int(count) for status, count in result}

    async def top_members(self, guild_id: int, day: date, limit: int) -> list[MemberTotals]:
        """The members who made the most songs in a server on a day (members who deleted their data excluded)."""
        songs = sa.func.sum(usage.c.songs).label("songs")
        seconds = sa.func.sum(usage.c.seconds).label("seconds")
        result = await self.conn.execute(
            sa.select(usage.c.user_id, songs, seconds)
            .where(usage.c.guild_id == guild_id, usage.c.day == day, usage.c.user_id.is_not(None))
            .group_by(usage.c.user_id)
            .having(songs > 0)
            .order_by(songs.desc(), seconds.desc(), usage.c.user_id)
            .limit(limit)
        )
        return [MemberTotals(user_id=row.user_id, songs=int(row.songs), seconds=int(row.seconds)) for row in result]

    async def _add_usage(
        self, guild_id: int, key: str, day: date, user_id: int | None, songs: int, seconds: int
    ) -> None:
        where = (usage.c.guild_id == guild_id) & (usage.c.member_key == key) & (usage.c.day == day)
        values: dict[str, object] = {"songs": usage.c.songs + songs, "seconds": usage.c.seconds + seconds}
        if user_id is not None:
            values["user_id"] = user_id
        result = await self.conn.execute(usage.update().where(where).values(**values))
        if result.rowcount == 0:
            await self.conn.execute(
                usage.insert().values(
                    guild_id=guild_id, member_key=key, day=day, user_id=user_id, songs=songs, seconds=seconds
                )
            )

    async def reserve(self, job_id: int, guild_id: int, user_id: int, day: date, songs: int, seconds: int) -> None:
        key = self.member_key(user_id)
        await self.conn.execute(
            reservations.insert().values(
                job_id=job_id,
                guild_id=guild_id,
                member_key=key,
                day=day,
                songs=songs,
                seconds=seconds,
                state=ReservationState.HELD.value,
                updated_at=self.clock.now(),
            )
        )
        await self._add_usage(guild_id, key, day, user_id, songs, seconds)

    async def reservation(self, job_id: int) -> Reservation | None:
        row = (await self.conn.execute(sa.select(reservations).where(reservations.c.job_id == job_id))).first()
        if row is None:
            return None
        return Reservation(
            job_id=row.job_id,
            guild_id=row.guild_id,
            member_key=row.member_key,
            day=row.day,
            songs=row.songs,
            seconds=row.seconds,
            state=ReservationState(row.state),
            billed_seconds=row.billed_seconds,
        )

    async def _set_reservation(self, job_id: int, state: ReservationState, seconds: int, billed: int) -> None:
        await self.conn.execute(
            reservations.update()
            .where(reservations.c.job_id == job_id)
            .values(state=state.value, seconds=seconds, billed_seconds=billed, updated_at=self.clock.now())
        )

    async def settle(self, job_id: int, actual_seconds: float, billed_seconds: float | None = None) -> bool:
        """Turn a held reservation into real use, replacing the estimated seconds with the actual ones.

        ``billed_seconds``: what DashScope billed for the job over all its attempts (default: ``actual_seconds``),
        for the operator's budget. Counted on the day the job was accepted. False (and no change) when it was
        already settled or refunded.
        """
        held = await self.reservation(job_id)
        if held is None or held.state is not ReservationState.HELD:
            return False
        actual = whole_seconds(actual_seconds)
        billed = max(actual, whole_seconds(billed_seconds)) if billed_seconds is not None else actual
        await self._add_usage(held.guild_id, held.member_key, held.day, None, 0, actual - held.seconds)
        await self._set_reservation(job_id, ReservationState.COMMITTED, actual, billed)
        return True

    async def refund(self, job_id: int, billed_seconds: float = 0) -> bool:
        """Give back what a job reserved (or committed) to the member's and the server's quotas. What DashScope
        billed for it (``billed_seconds``) stays on the operator's budget. Idempotent: False when there is nothing
        to give back."""
        held = await self.reservation(job_id)
        if held is None or held.state is ReservationState.REFUNDED:
            return False
        billed = max(held.billed_seconds, whole_seconds(billed_seconds))
        await self._add_usage(held.guild_id, held.member_key, held.day, None, -held.songs, -held.seconds)
        await self._set_reservation(job_id, ReservationState.REFUNDED, held.seconds, billed)
        return True

    # --- privacy --------------------------------------------------------------------------------------------

    async def erase_text_before(self, cutoff: datetime) -> int:
        """Retention: erase the prompt and lyrics of jobs that ended before ``cutoff``. Returns how many jobs."""
        result = await self.conn.execute(
            jobs.update()
            .where(jobs.c.finished_at < cutoff, sa.or_(jobs.c.prompt.is_not(None), jobs.c.lyrics.is_not(None)))
            .values(prompt=None, lyrics=None)
        )
        return int(result.rowcount)

    async def running_job_ids(self, job_ids: list[int]) -> set[int]:
        """Which of ``job_ids`` exist and have not ended (their work files are still in use)."""
        if not job_ids:
            return set()
        result = await self.conn.execute(
            sa.select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.status.not_in(_TERMINAL_VALUES))
        )
        return {int(row[0]) for row in result}

    async def delete_member_data(self, user_id: int) -> int:
        """Erase a member's text from every job of theirs. A job still running keeps its owner id until it ends
        (Cancel checks it), marked ``erase_on_finish`` so that :meth:`transition` erases the id then."""
        mine = jobs.c.user_id == user_id
        scrubbed = await self.conn.execute(
            jobs.update().where(mine, jobs.c.status.in_(_TERMINAL_VALUES)).values(user_id=None, **_ERASED_TEXT)
        )
        running = await self.conn.execute(
            jobs.update()
            .where(mine, jobs.c.status.not_in(_TERMINAL_VALUES))
            .values(erase_on_finish=True, **_ERASED_TEXT)
        )
        await self.conn.execute(usage.update().where(usage.c.user_id == user_id).values(user_id=None))
        await self.conn.execute(audit_log.update().where(audit_log.c.actor_id == user_id).values(actor_id=None))
        await self.conn.execute(
            guild_settings.update().where(guild_settings.c.updated_by == user_id).values(updated_by=None)
        )
        return int(scrubbed.rowcount) + int(running.rowcount)


async def load_salt(conn: AsyncConnection) -> str:
    salt = await conn.scalar(sa.select(meta.c.value).where(meta.c.key == "member_key_salt"))
    if not isinstance(salt, str) or not salt:
        raise RuntimeError("the database has no member_key_salt; it was not created by songbot's migrations")
    return salt
