"""The job runner: a bounded FIFO queue, global and per-server concurrency limits, and the lifecycle of one song.

``accepted → queued → generating → processing → delivering → delivered``, with exits ``failed``, ``cancelled`` and
``interrupted``. Every transition is one store write. The runner knows nothing about Discord: the cog hands it a
:class:`JobObserver` that shows progress and delivers the finished song, and the runner turns every outcome into
exactly one call of ``deliver``, ``failed`` or ``cancelled`` on it, so no member is left without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol, Unpack

from services.audio import FitResult, Tags, fit, waveform_png
from services.errors import CannotFit, ServiceError, SongbotError
from services.funmusic.request import GenerationRequest, GenerationResult, Progress, ProgressCallback, ProgressStage
from services.logs import bind_log_context, log_context
from services.metrics import Metrics
from services.store.records import JobStateError, JobStatus, JobUpdate

log = logging.getLogger(__name__)

#: Waits before each new try of the bookkeeping after a delivery (settle, "delivered"): a song that reached the
#: member is never taken back, so a failed write is logged with its error id and tried again.
BOOKKEEPING_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


class ShuttingDown(SongbotError):
    """The bot is stopping; the job is stopped and its quota refunded."""

    summary = "The bot is restarting, so your song was stopped and your quota refunded. Please try again soon."


class DeliveryFailed(SongbotError):
    """Every way of posting the finished song failed."""

    summary = "Your song was made but could not be posted here."


class Generator(Protocol):
    async def generate(
        self, request: GenerationRequest, *, out_dir: Path, on_progress: ProgressCallback | None = None
    ) -> GenerationResult: ...


class JobStore(Protocol):
    async def transition(self, job_id: int, status: JobStatus | str, **fields: Unpack[JobUpdate]) -> object: ...


class Ledger(Protocol):
    async def settle(self, job_id: int, actual_seconds: float, billed_seconds: float | None = None) -> object: ...

    async def refund(self, job_id: int, billed_seconds: float = 0) -> object: ...


def _whole(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))


@dataclass
class Spend:
    """What DashScope generated, and so billed, for one job: seconds of audio per attempt, from the client's
    progress reports (billing is per second of audio generated, whether the song was delivered or not)."""

    streamed: dict[int, float] = field(default_factory=dict)  # generation attempt -> seconds of audio streamed
    attempt: int = 0  # the latest generation attempt
    downloaded: float = 0.0  # seconds of audio fetched from the url (a non-streaming answer)

    def record(self, progress: Progress) -> None:
        if progress.stage in (ProgressStage.CONNECTING, ProgressStage.GENERATING):
            self.attempt = max(self.attempt, progress.attempt)
        if progress.stage == ProgressStage.GENERATING:
            self.streamed[progress.attempt] = max(self.streamed.get(progress.attempt, 0.0), progress.seconds_received)
        elif progress.stage == ProgressStage.DOWNLOADING:
            self.downloaded = max(self.downloaded, progress.seconds_received)

    def billed(self, result: GenerationResult | None = None) -> int:
        """Whole seconds billed: every attempt's streamed audio; for a finished song, its last attempt is what the
        service says it billed (``usage.duration``), else the song's length."""
        if result is not None:
            earlier = sum(_whole(s) for attempt, s in self.streamed.items() if attempt != self.attempt)
            last = result.billed_seconds if result.billed_seconds is not None else _whole(result.duration_s)
            return earlier + max(0, last)
        streamed = sum(_whole(s) for s in self.streamed.values())
        return streamed if streamed else _whole(self.downloaded)


class DeliveryRoute(StrEnum):
    """Which rung of the delivery ladder posted the song (or, ``LINK``, only its download link)."""

    ORIGINAL = "original"
    CHANNEL = "channel"
    DM = "dm"
    LINK = "link"


@dataclass(frozen=True)
class Delivery:
    """Where the finished song was posted."""

    channel_id: int | None
    message_id: int | None
    how: DeliveryRoute


@dataclass
class PreparedSong:
    """A generated song made ready for Discord: the audio fitted to the upload limit (or None), the waveform."""

    job_id: int
    result: GenerationResult
    audio: FitResult | None
    waveform: Path | None
    tags: Tags
    want_format: str
    work_dir: Path

    async def refit(self, max_bytes: int) -> FitResult | None:
        """A smaller file for a retry after Discord refused the upload (413); None if nothing fits."""
        try:
            self.audio = await fit(
                self.result.audio_path,
                self.result.format,
                self.want_format,
                max_bytes,
                tags=self.tags,
                out_dir=self.work_dir,
            )
        except CannotFit:
            self.audio = None
        return self.audio


class JobObserver(Protocol):
    async def queued(self, position: int) -> None: ...

    async def stage(self, stage: JobStatus, progress: Progress | None) -> None: ...

    async def deliver(self, song: PreparedSong) -> Delivery: ...

    async def failed(self, error: SongbotError) -> None: ...

    async def cancelled(self, by_user_id: int | None) -> None: ...


@dataclass(frozen=True)
class JobSpec:
    """Everything the runner needs to make and hand over one song."""

    job_id: int
    guild_id: int | None
    user_id: int
    request: GenerationRequest
    want_format: str
    max_bytes: int
    tags: Tags
    guild_limit: int


class Place:
    """A request's claim on the queue while it is admitted: claimed inside ``Policy.admit``'s write transaction
    (which excludes other admissions) and held until :meth:`JobManager.submit`, across the awaits in between (the
    commit, the defer). Concurrent requests count it, so a burst can neither overfill the queue nor give one
    member more than their share. ``release`` it once the job is submitted or the request refused."""

    def __init__(self, manager: JobManager, user_id: int) -> None:
        self._manager = manager
        self.user_id = user_id
        self.claimed = False

    def member_songs(self) -> int:
        """For ``Policy.admit``: the member's songs queued or generating, counting requests being admitted."""
        return self._manager.in_progress(self.user_id)

    def claim(self) -> bool:
        """For ``Policy.admit``: if the queue has room, claim a place in it."""
        if not self.claimed:
            self.claimed = self._manager.claim_place(self.user_id)
        return self.claimed

    def release(self) -> None:
        """Give the claim back (after ``submit``, or when the request was refused). Idempotent."""
        if self.claimed:
            self.claimed = False
            self._manager.release_place(self.user_id)


@dataclass(eq=False)
class _Entry:
    spec: JobSpec
    observer: JobObserver
    go: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    position: int = 0
    stage: JobStatus = JobStatus.ACCEPTED
    cancelled_by: int | None = None
    cancel_requested: bool = False
    shutting_down: bool = False
    delivered: bool = False  # the song reached the member: nothing may take it back any more
    concluding: bool = False  # on its failure or cancel path: a Cancel now must not cut the member's last word
    spend: Spend = field(default_factory=Spend)
    result: GenerationResult | None = None  # the finished song, once the service delivered it
    submitted_at: float = 0.0  # loop time of submit (for the queue-wait metric)
    generated_at: float = 0.0  # loop time the last audio byte arrived (for the delivery-time metric)


class JobManager:
    """Owns the queue and every running job of the process."""

    def __init__(
        self,
        *,
        generator: Generator,
        store: JobStore,
        ledger: Ledger,
        work_dir: Path,
        max_concurrent: int,
        queue_size: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._generator = generator
        self._store = store
        self._ledger = ledger
        self._work_dir = work_dir
        self._max_concurrent = max_concurrent
        self._queue_size = queue_size
        self._waiting: list[_Entry] = []
        self._running: dict[int, _Entry] = {}
        self._per_guild: Counter[int | None] = Counter()
        self._entries: dict[int, _Entry] = {}
        self._claims: Counter[int] = Counter()  # places claimed by requests being admitted, per member (Place)
        self._closing = False

    # --- queries -------------------------------------------------------------------------------------------------
    def queue_has_room(self) -> bool:
        """True while a new job could start now or wait in the queue."""
        waiting = len(self._waiting) + self._claims.total()
        return not self._closing and waiting < self._queue_size + max(0, self._max_concurrent - len(self._running))

    @property
    def active_jobs(self) -> int:
        return len(self._entries)

    def jobs_of(self, user_id: int) -> list[int]:
        return [job_id for job_id, entry in self._entries.items() if entry.spec.user_id == user_id]

    def in_progress(self, user_id: int) -> int:
        """A member's songs queued or generating, counting requests still being admitted (see Place)."""
        return len(self.jobs_of(user_id)) + self._claims[user_id]

    def place(self, user_id: int) -> Place:
        """An unclaimed place for a new request of this member; pass it to ``Policy.admit``."""
        return Place(self, user_id)

    def claim_place(self, user_id: int) -> bool:
        """A place in the queue for a request being admitted (see Place), if the queue has room."""
        if not self.queue_has_room():
            return False
        self._claims[user_id] += 1
        return True

    def release_place(self, user_id: int) -> None:
        self._claims[user_id] -= 1
        if self._claims[user_id] <= 0:
            del self._claims[user_id]

    # --- commands ------------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, observer: JobObserver) -> asyncio.Task[None]:
        """Queue a job that policy already admitted (quota reserved). Returns the task that runs it."""
        if self._closing:
            raise ShuttingDown("the job manager is closing")
        entry = _Entry(spec=spec, observer=observer, submitted_at=asyncio.get_running_loop().time())
        self._entries[spec.job_id] = entry
        self._waiting.append(entry)
        with log_context(job_id=spec.job_id, guild_id=spec.guild_id):  # the task copies the context: every line it logs
            entry.task = asyncio.create_task(self._run(entry), name=f"song-job-{spec.job_id}")
        self._pump()
        return entry.task

    def cancel(self, job_id: int, by_user_id: int | None) -> bool:
        """Cancel a job that is queued or generating. False if it is past the point of no return (or unknown)."""
        entry = self._entries.get(job_id)
        if (
            entry is None
            or entry.task is None
            or entry.stage not in (JobStatus.ACCEPTED, JobStatus.QUEUED, JobStatus.GENERATING)
        ):
            return False
        if entry.concluding and not entry.cancel_requested:
            # the job already failed and is telling its member (refund, words, buttons removed): let that finish
            return False
        if entry.cancel_requested:
            # a second task.cancel() would interrupt the job's own clean-up and leave the member without a word
            return True
        entry.cancel_requested = True
        entry.cancelled_by = by_user_id
        entry.task.cancel()
        return True

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop every job: each is marked interrupted, refunded and its member told. Then return."""
        self._closing = True
        entries = list(self._entries.values())
        for entry in entries:
            entry.shutting_down = True
            if entry.task is not None and entry.stage != JobStatus.DELIVERING and not entry.concluding:
                entry.task.cancel()
        tasks = [e.task for e in entries if e.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)

    # --- scheduling ----------------------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start every waiting job that has a free global and per-server slot, in FIFO order; renumber the rest."""
        still_waiting: list[_Entry] = []
        for entry in self._waiting:
            guild = entry.spec.guild_id
            if len(self._running) < self._max_concurrent and self._per_guild[guild] < entry.spec.guild_limit:
                self._running[entry.spec.job_id] = entry
                self._per_guild[guild] += 1
                entry.position = 0
                entry.go.set()
            else:
                still_waiting.append(entry)
        self._waiting = still_waiting
        for index, entry in enumerate(self._waiting, start=1):
            if entry.position != index:
                entry.position = index
                if entry.stage == JobStatus.QUEUED:
                    self._notify_position(entry)

    def _notify_position(self, entry: _Entry) -> None:
        position = entry.position

        async def tell() -> None:
            with contextlib.suppress(Exception):
                await entry.observer.queued(position)

        asyncio.get_running_loop().create_task(tell())

    def _release(self, entry: _Entry) -> None:
        job_id = entry.spec.job_id
        self._entries.pop(job_id, None)
        if entry in self._waiting:
            self._waiting.remove(entry)
        if self._running.pop(job_id, None) is not None:
            self._per_guild[entry.spec.guild_id] -= 1
        if not self._closing:
            self._pump()

    # --- one job -------------------------------------------------------------------------------------------------
    async def _set_stage(self, entry: _Entry, stage: JobStatus, **fields: Unpack[JobUpdate]) -> None:
        entry.stage = stage
        await self._store.transition(entry.spec.job_id, stage, **fields)

    async def _run(self, entry: _Entry) -> None:
        job_dir = self._work_dir / f"job-{entry.spec.job_id}"
        try:
            await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
            await self._wait_for_slot(entry)
            song = await self._make(entry, job_dir)
            await self._deliver(entry, song)
        except asyncio.CancelledError:
            entry.concluding = True
            if entry.delivered:
                log.warning("job %s: stopped after its song was delivered; the delivery stands", entry.spec.job_id)
            else:
                await self._on_cancelled(entry)
            if not entry.cancel_requested and not entry.shutting_down:
                raise
        except Exception as exc:
            entry.concluding = True  # from here, a Cancel pressed at this instant cannot interrupt the failure path
            if entry.delivered:  # the member has the song: never refund it or edit their message into a failure
                wrapped = exc if isinstance(exc, SongbotError) else SongbotError(f"unexpected {type(exc).__name__}")
                log.exception(
                    "job %s: error after delivery [error %s]; the delivery stands",
                    entry.spec.job_id,
                    wrapped.error_id,
                    extra={"error_id": wrapped.error_id},
                )
            elif isinstance(exc, SongbotError):
                await self._on_failed(entry, exc)
            else:  # a bug: log it whole, tell the member in plain words
                wrapped = SongbotError(f"unexpected {type(exc).__name__}")
                log.exception(
                    "job %s failed unexpectedly [error %s]",
                    entry.spec.job_id,
                    wrapped.error_id,
                    extra={"error_id": wrapped.error_id},
                )
                await self._on_failed(entry, wrapped, logged=True)
        finally:
            self._release(entry)
            await asyncio.to_thread(shutil.rmtree, job_dir, True)

    async def _wait_for_slot(self, entry: _Entry) -> None:
        if not entry.go.is_set():
            await self._set_stage(entry, JobStatus.QUEUED)
            await entry.observer.queued(entry.position or 1)
            await entry.go.wait()

    async def _make(self, entry: _Entry, job_dir: Path) -> PreparedSong:
        spec = entry.spec
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._metrics.queue_wait.observe(started - entry.submitted_at)
        await self._set_stage(entry, JobStatus.GENERATING)
        await entry.observer.stage(JobStatus.GENERATING, None)

        async def on_progress(progress: Progress) -> None:
            entry.spend.record(progress)
            await entry.observer.stage(JobStatus.GENERATING, progress)

        result = await self._generator.generate(spec.request, out_dir=job_dir, on_progress=on_progress)
        entry.generated_at = loop.time()
        self._metrics.generation.observe(entry.generated_at - started)
        entry.result = result
        bind_log_context(request_id=result.request_id)
        await self._set_stage(
            entry,
            JobStatus.PROCESSING,
            request_id=result.request_id,
            duration_s=result.duration_s,
            url=result.url,
            url_expires_at=datetime.fromtimestamp(result.url_expires_at, UTC) if result.url_expires_at else None,
        )
        await entry.observer.stage(JobStatus.PROCESSING, None)
        return await prepare_song(spec, result, job_dir)

    async def _deliver(self, entry: _Entry, song: PreparedSong) -> None:
        await self._set_stage(entry, JobStatus.DELIVERING)
        await entry.observer.stage(JobStatus.DELIVERING, None)
        delivery = await entry.observer.deliver(song)
        entry.delivered = True
        entry.stage = JobStatus.DELIVERED
        self._metrics.delivery.observe(asyncio.get_running_loop().time() - entry.generated_at)
        self._metrics.song_ended(JobStatus.DELIVERED)
        log.info(
            "job %s delivered via %s (request %s, %.1f s)",
            entry.spec.job_id,
            delivery.how,
            song.result.request_id,
            song.result.duration_s,
        )
        job_id = entry.spec.job_id
        used = song.result.billed_seconds or round(song.result.duration_s)
        billed = entry.spend.billed(song.result)
        await self._bookkeep(job_id, "its quota use", lambda: self._ledger.settle(job_id, int(used), billed))
        where: JobUpdate = {"message_id": delivery.message_id}
        if delivery.channel_id is not None:
            where["channel_id"] = delivery.channel_id
        await self._bookkeep(
            job_id, "it as delivered", lambda: self._store.transition(job_id, JobStatus.DELIVERED, **where)
        )

    async def _bookkeep(self, job_id: int, what: str, write: Callable[[], Awaitable[object]]) -> bool:
        """One write after a delivery. It never fails the job: each failure is logged with an error id and the
        write tried again (``BOOKKEEPING_RETRY_DELAYS_S``); a :class:`JobStateError` (the row says the job already
        ended, e.g. another process marked it) cannot change by retrying and is only logged. True once written."""
        for delay in (*BOOKKEEPING_RETRY_DELAYS_S, None):
            try:
                await write()
                return True
            except Exception as exc:
                error = exc if isinstance(exc, SongbotError) else SongbotError(f"{type(exc).__name__}")
                final = delay is None or isinstance(exc, JobStateError)
                log.error(
                    "job %s: the song was delivered, but recording %s failed [error %s]: %s: %s%s",
                    job_id,
                    what,
                    error.error_id,
                    type(exc).__name__,
                    exc,
                    "" if final else f"; trying again in {delay:g} s",
                    extra={"error_id": error.error_id},
                )
                if final:
                    return False
                assert delay is not None
                await asyncio.sleep(delay)
        return False

    async def _on_cancelled(self, entry: _Entry) -> None:
        job_id = entry.spec.job_id
        if entry.shutting_down and not entry.cancel_requested:
            error = ShuttingDown("bot shutting down")
            await self._finish(entry, JobStatus.INTERRUPTED, error_code="shutdown", error_id=error.error_id)
            await _quietly(entry.observer.failed(error))
            log.info("job %s interrupted by shutdown [error %s]; quota refunded", job_id, error.error_id)
            return
        await self._finish(entry, JobStatus.CANCELLED, error_code="cancelled")
        await _quietly(entry.observer.cancelled(entry.cancelled_by))
        log.info("job %s cancelled by %s", job_id, entry.cancelled_by)

    async def _on_failed(self, entry: _Entry, exc: SongbotError, *, logged: bool = False) -> None:
        code = exc.code if isinstance(exc, ServiceError) and exc.code else type(exc).__name__
        if not logged:
            request_id = exc.request_id if isinstance(exc, ServiceError) else None
            log.warning(
                "job %s failed [error %s]: %s (request %s)",
                *(entry.spec.job_id, exc.error_id, exc, request_id),
                extra={"error_id": exc.error_id, "request_id": request_id},
            )
        await self._finish(entry, JobStatus.FAILED, error_code=code, error_id=exc.error_id)
        await _quietly(entry.observer.failed(exc))

    async def _finish(self, entry: _Entry, status: JobStatus, **fields: Unpack[JobUpdate]) -> None:
        """Refund, then record the terminal state; shielded so a second cancel cannot leave it half-written."""

        self._metrics.song_ended(status)

        async def write() -> None:
            await self._ledger.refund(entry.spec.job_id, entry.spend.billed(entry.result))
            entry.stage = status
            await self._store.transition(entry.spec.job_id, status, **fields)

        try:
            await asyncio.shield(write())
        except Exception:
            log.exception("job %s: could not record %s", entry.spec.job_id, status)


async def prepare_song(spec: JobSpec, result: GenerationResult, job_dir: Path) -> PreparedSong:
    """Fit the audio under the upload limit and draw its waveform, both off the event loop, at the same time.

    The lyrics exist only now (the service writes them), so they join the title and artist in the file's tags here.
    """
    tags = replace(spec.tags, lyrics=result.lyrics or spec.tags.lyrics)

    async def fitted() -> FitResult | None:
        try:
            return await fit(
                result.audio_path, result.format, spec.want_format, spec.max_bytes, tags=tags, out_dir=job_dir
            )
        except CannotFit:
            return None

    async def picture() -> Path | None:
        try:
            return await waveform_png(result.audio_path, job_dir / "waveform.png")
        except SongbotError:
            log.warning("job %s: no waveform picture", spec.job_id, exc_info=True)
            return None

    fitting, drawing = asyncio.ensure_future(fitted()), asyncio.ensure_future(picture())
    try:
        audio, wave = await asyncio.gather(fitting, drawing)
    finally:
        # a cancel (shutdown) ends the gather as soon as one of them ends, and a failure does not stop the other: wait
        # for both, so that neither's ffmpeg outlives the job (its work dir is removed next). Cancel each at most
        # once: a second cancel would cut short its clean-up (killing and reaping its ffmpeg).
        for task in (fitting, drawing):
            if not task.done() and not task.cancelling():
                task.cancel()
        await asyncio.wait((fitting, drawing))
    return PreparedSong(
        job_id=spec.job_id,
        result=result,
        audio=audio,
        waveform=wave,
        tags=tags,
        want_format=spec.want_format,
        work_dir=job_dir,
    )


async def _quietly(awaitable: Awaitable[None]) -> None:
    """Observer calls on the way out must not mask the outcome; their failures are logged."""
    try:
        await awaitable
    except Exception:
        log.exception("observer failed while reporting a job's outcome")
