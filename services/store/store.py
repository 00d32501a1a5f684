"""The store: the one owner of the database, opened at start (migrating it) and closed at shutdown.

Every public method is one transaction. Moderator settings are stored as overrides of the code defaults in
:mod:`services.guild_settings`; every change writes one audit row per changed setting (a "change" that changes
nothing writes none).

What is stored about a member, and what :meth:`Store.delete_member_data` does with it:

* jobs: their prompt, lyrics and options, the result message and audio url, the status and timestamps. Deletion
  scrubs the prompt, lyrics, options and url from every job of theirs, and the member's id from every finished one
  (the rows stay, anonymised, so the server's history of counts stays right). A job still running keeps the id,
  which its Cancel button's owner check needs, until it ends; then it is erased too (``erase_on_finish``).
* usage per server, member and UTC day. Rows are keyed by a *member key*, an HMAC-SHA256 of the member id with a
  random salt kept in this database; the plain id is kept beside it only for ``/songusage``'s top members.
  Deletion removes the plain id and keeps the counts under the member key, so the server's quotas *and the
  member's own daily quota and cooldown* still hold after deletion (the bot can still recognise the member by
  hashing the id of a new request, but cannot list who the keys belong to without the member's id).
* audit rows they wrote as a moderator: deletion sets the actor to NULL and keeps what was changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Unpack

from services.clock import Clock
from services.guild_settings import DEFAULTS, GuildSettings, validate_setting
from services.store.engine import Database
from services.store.migrations import current_version, migrate
from services.store.records import AuditEntry, JobRecord, JobStatus, JobUpdate, ReservationState
from services.store.repo import Tx, load_salt

SettingsChange = tuple[GuildSettings, GuildSettings]
IdsEdit = Callable[[tuple[int, ...]], tuple[int, ...]]


class Store:
    """Settings, audit, jobs and usage in SQLite or PostgreSQL. Create with :meth:`open`."""

    def __init__(self, db: Database, clock: Clock, salt: str) -> None:
        self._db = db
        self.clock = clock
        self._salt = salt

    @classmethod
    async def open(cls, url: str, *, clock: Clock, search_path: str | None = None) -> Store:
        """Connect, apply pending migrations in one transaction, and return the store.

        ``url``: ``sqlite+aiosqlite:///data/songbot.db`` (the file and its folder are created) or
        ``postgresql+asyncpg://user@host/db``. ``search_path`` (PostgreSQL only) names the schema to use.
        """
        db = await Database.connect(url, search_path=search_path)
        try:
            async with db.write() as conn:
                await migrate(conn, clock.now())
                salt = await load_salt(conn)
        except BaseException:
            await db.dispose()
            raise
        return cls(db, clock, salt)

    async def close(self) -> None:
        await self._db.dispose()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.backend

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """A write transaction that excludes every other writer (for check-then-write, e.g. admission)."""
        async with self._db.write() as conn:
            yield Tx(conn, self.clock, self._salt)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        async with self._db.read() as conn:
            yield Tx(conn, self.clock, self._salt)

    async def schema_version(self) -> int:
        async with self._db.read() as conn:
            return await current_version(conn)

    # --- guild settings ---------------------------------------------------------------------------------------

    async def guilds_with_channels(self) -> dict[int, list[int]]:
        async with self.read() as tx:
            return await tx.guilds_with_channels()

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        async with self.read() as tx:
            return await tx.settings(guild_id)

    async def _change(
        self, guild_id: int, actor_id: int, action: str, change: Callable[[GuildSettings], GuildSettings]
    ) -> SettingsChange:
        async with self.write() as tx:
            before = await tx.settings(guild_id)
            after = change(before)
            await tx.save_settings(guild_id, actor_id, action, before, after)
            return before, after

    async def update_guild_settings(
        self, guild_id: int, actor_id: int, changes: Mapping[str, object]
    ) -> SettingsChange:
        """Validate and apply ``changes`` (all or none); returns (before, after). Raises InvalidInput."""
        for name, value in changes.items():
            validate_setting(name, value)
        return await self._change(guild_id, actor_id, "set", lambda s: s.with_changes(changes))

    async def _edit_ids(self, guild_id: int, actor_id: int, name: str, action: str, edit: IdsEdit) -> SettingsChange:
        def change(current: GuildSettings) -> GuildSettings:
            ids = current.channels if name == "channels" else current.roles
            return current.with_changes({name: edit(ids)})

        return await self._change(guild_id, actor_id, f"{name}.{action}", change)

    async def add_channel(self, guild_id: int, actor_id: int, channel_id: int) -> SettingsChange:
        validate_setting("channels", [channel_id])
        return await self._edit_ids(guild_id, actor_id, "channels", "add", lambda ids: (*ids, channel_id))

    async def remove_channel(self, guild_id: int, actor_id: int, channel_id: int) -> SettingsChange:
        return await self._edit_ids(
            guild_id, actor_id, "channels", "remove", lambda ids: tuple(i for i in ids if i != channel_id)
        )

    async def clear_channels(self, guild_id: int, actor_id: int) -> SettingsChange:
        return await self._edit_ids(guild_id, actor_id, "channels", "clear", lambda ids: ())

    async def add_role(self, guild_id: int, actor_id: int, role_id: int) -> SettingsChange:
        validate_setting("roles", [role_id])
        return await self._edit_ids(guild_id, actor_id, "roles", "add", lambda ids: (*ids, role_id))

    async def remove_role(self, guild_id: int, actor_id: int, role_id: int) -> SettingsChange:
        return await self._edit_ids(
            guild_id, actor_id, "roles", "remove", lambda ids: tuple(i for i in ids if i != role_id)
        )

    async def clear_roles(self, guild_id: int, actor_id: int) -> SettingsChange:
        return await self._edit_ids(guild_id, actor_id, "roles", "clear", lambda ids: ())

    async def reset_guild_settings(self, guild_id: int, actor_id: int) -> SettingsChange:
        """Back to the code defaults (overrides removed), one audit row per setting that changed."""
        return await self._change(guild_id, actor_id, "reset", lambda s: DEFAULTS)

    async def audit_log(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The newest ``limit`` settings changes in a server, newest first."""
        async with self.read() as tx:
            return await tx.audit(guild_id, limit)

    # --- jobs -------------------------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        prompt: str | None,
        lyrics: str | None,
        options: Mapping[str, object],
    ) -> int:
        """A job row (status accepted) with no quota reserved; :meth:`Policy.admit` is the usual way in."""
        async with self.write() as tx:
            return await tx.insert_job(
                guild_id=guild_id, channel_id=channel_id, user_id=user_id, prompt=prompt, lyrics=lyrics, options=options
            )

    async def transition(self, job_id: int, status: JobStatus | str, **fields: Unpack[JobUpdate]) -> JobRecord:
        """Move a job forward (one write), setting ``fields`` with it; terminal states also set ``finished_at``.

        Raises :class:`JobStateError` for an unknown job, a job already terminal, or a step backwards.
        """
        async with self.write() as tx:
            return await tx.transition(job_id, JobStatus(status), fields)

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self.read() as tx:
            return await tx.job(job_id)

    async def set_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember where a job's result (or its progress message) was posted, whatever its status."""
        async with self.write() as tx:
            await tx.set_message(job_id, channel_id, message_id)

    async def recover_interrupted(self) -> list[JobRecord]:
        """At start-up: mark every unfinished job interrupted and refund its quota; returns them (now interrupted,
        each with the interaction token it had, which the database no longer keeps) so the bot can tell members.

        What DashScope billed for them is not known after a crash; the operator's budget keeps a cautious figure:
        the song's length once it had arrived (processing or later), the estimate while it was generating (the
        audio may have been paid for), nothing while it was only queued.

        A job whose quota was already settled had its song posted (settling follows a delivery), only the
        "delivered" write was lost: it is marked delivered, never refunded, and not returned."""
        async with self.write() as tx:
            recovered = []
            for job in await tx.unfinished_jobs():
                held = await tx.reservation(job.id)
                if held is not None and held.state is ReservationState.COMMITTED:
                    await tx.transition(job.id, JobStatus.DELIVERED, {})
                    continue
                if job.duration_s is not None:
                    billed = job.duration_s
                elif job.status is JobStatus.GENERATING and held is not None:
                    billed = float(held.seconds)
                else:
                    billed = 0.0
                ended = await tx.transition(job.id, JobStatus.INTERRUPTED, {})
                recovered.append(replace(ended, interaction_token=job.interaction_token))
                await tx.refund(job.id, billed_seconds=billed)
            return recovered

    async def history(self, user_id: int, guild_id: int | None = None, limit: int = 10) -> list[JobRecord]:
        """A member's jobs, newest first; ``guild_id`` None means every server and DMs."""
        async with self.read() as tx:
            return await tx.history(user_id, guild_id, limit)

    # --- privacy ----------------------------------------------------------------------------------------------

    async def erase_old_text(self, retention_days: int) -> int:
        """Erase prompts and lyrics of jobs that ended more than ``retention_days`` ago; returns how many jobs."""
        cutoff = self.clock.now() - timedelta(days=retention_days)
        async with self.write() as tx:
            return await tx.erase_text_before(cutoff)

    async def jobs_by_status(self) -> dict[str, int]:
        async with self.read() as tx:
            return await tx.jobs_by_status()

    async def running_job_ids(self, job_ids: list[int]) -> set[int]:
        async with self.read() as tx:
            return await tx.running_job_ids(job_ids)

    async def delete_member_data(self, user_id: int) -> int:
        """Erase a member's prompts, lyrics, urls and history; anonymise their usage and audit rows (see the
        module docstring for what stays and why). Returns how many of their jobs were scrubbed."""
        async with self.write() as tx:
            return await tx.delete_member_data(user_id)
