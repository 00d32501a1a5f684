"""The job manager on its own: FIFO order, the global and per-server limits, cancel while queued, shutdown.

A real store (SQLite file, and PostgreSQL when configured) and the real Policy as the ledger; the generator is a
stand-in that implements the Generator protocol and writes real audio made by ffmpeg once each test lets it finish,
so every song goes through the real fitting and waveform steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.audio import Tags
from services.errors import SongbotError
from services.ffmpeg import render_test_audio
from services.funmusic.request import GenerationRequest, GenerationResult, ProgressCallback
from services.jobs import Delivery, DeliveryRoute, JobManager, JobSpec, PreparedSong, ShuttingDown
from services.policy import Policy
from services.store import JobStatus, Store
from tests.support.clock import FakeClock

GUILD_A = 111
GUILD_B = 222
CHANNEL = 333
MEMBER = 444
MODERATOR = 555

_audio: list[bytes] = []


async def one_second_of_music() -> bytes:
    """One second of real mp3, rendered once for the module."""
    if not _audio:
        _audio.append(await render_test_audio(1.0))
    return _audio[0]


class GatedGenerator:
    """A Generator whose songs finish only when the test says so: ``started`` records the prompts in the order
    the manager asked for them; ``finish(prompt)`` lets that song end with a real audio file."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._began: dict[str, asyncio.Event] = {}
        self._gates: dict[str, asyncio.Event] = {}

    def _event(self, events: dict[str, asyncio.Event], prompt: str) -> asyncio.Event:
        return events.setdefault(prompt, asyncio.Event())

    async def began(self, prompt: str) -> None:
        await self._event(self._began, prompt).wait()

    def finish(self, prompt: str) -> None:
        self._event(self._gates, prompt).set()

    async def generate(
        self, request: GenerationRequest, *, out_dir: Path, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        prompt = request.prompt or ""
        self.started.append(prompt)
        self._event(self._began, prompt).set()
        await self._event(self._gates, prompt).wait()
        path = out_dir / "song.mp3"
        audio = await one_second_of_music()
        await asyncio.to_thread(path.write_bytes, audio)
        return GenerationResult(
            audio_path=path,
            format="mp3",
            lyrics="",
            duration_s=1.0,
            sample_rate=48000,
            channels=2,
            request_id=f"req-{prompt}",
            url=None,
            url_expires_at=None,
            audio_bytes=len(audio),
        )


@dataclass
class RecordingObserver:
    """A JobObserver that remembers what the member would have been told."""

    job_id: int
    positions: list[int] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    failures: list[SongbotError] = field(default_factory=list)
    cancelled_by: list[int | None] = field(default_factory=list)
    delivered: PreparedSong | None = None
    told_queued: asyncio.Event = field(default_factory=asyncio.Event)

    async def queued(self, position: int) -> None:
        self.positions.append(position)
        self.told_queued.set()

    async def stage(self, stage: str, progress: object) -> None:
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)

    async def deliver(self, song: PreparedSong) -> Delivery:
        self.delivered = song
        return Delivery(channel_id=CHANNEL, message_id=9000 + self.job_id, how=DeliveryRoute.ORIGINAL)

    async def failed(self, error: SongbotError) -> None:
        self.failures.append(error)

    async def cancelled(self, by_user_id: int | None) -> None:
        self.cancelled_by.append(by_user_id)


@dataclass
class Rig:
    store: Store
    ledger: Policy
    work_dir: Path
    generator: GatedGenerator = field(default_factory=GatedGenerator)
    manager: JobManager | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    observers: dict[str, RecordingObserver] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    async def submit(self, prompt: str, *, guild_id: int = GUILD_A, guild_limit: int = 5) -> RecordingObserver:
        job_id = await self.store.create_job(
            guild_id=guild_id, channel_id=CHANNEL, user_id=MEMBER, prompt=prompt, lyrics=None, options={}
        )
        spec = JobSpec(
            job_id=job_id,
            guild_id=guild_id,
            user_id=MEMBER,
            request=GenerationRequest(prompt=prompt),
            want_format="mp3",
            max_bytes=25 * 1024 * 1024,
            tags=Tags(title=prompt),
            guild_limit=guild_limit,
        )
        observer = RecordingObserver(job_id)
        self.ids[prompt] = job_id
        self.observers[prompt] = observer
        self.tasks[prompt] = self.jobs.submit(spec, observer)
        return observer

    async def line_up(self, *prompts: str) -> list[RecordingObserver]:
        """Submit these songs in order, then wait until the first is generating and the others were told their
        place in the queue (one at a time: the rig's default manager)."""
        observers = [await self.submit(prompt) for prompt in prompts]
        await self.generator.began(prompts[0])
        for observer in observers[1:]:
            await observer.told_queued.wait()
        return observers

    def open(self, *, max_concurrent: int, queue_size: int = 10) -> JobManager:
        """The manager under test, with these limits (once per test, before anything is submitted)."""
        assert self.manager is None
        self.manager = JobManager(
            generator=self.generator,
            store=self.store,
            ledger=self.ledger,
            work_dir=self.work_dir,
            max_concurrent=max_concurrent,
            queue_size=queue_size,
        )
        return self.manager

    @property
    def jobs(self) -> JobManager:
        return self.manager or self.open(max_concurrent=1)

    async def status(self, prompt: str) -> JobStatus:
        record = await self.store.get_job(self.ids[prompt])
        assert record is not None
        return JobStatus(record.status)

    async def done(self, *prompts: str) -> None:
        await asyncio.gather(*(self.tasks[p] for p in prompts))


@pytest.fixture
async def rig(store: Store, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Rig]:
    made = Rig(store, Policy(store, clock, global_daily_seconds=None), tmp_path / "work")
    try:
        yield made
    finally:
        if made.manager is not None:
            await made.manager.shutdown(grace_s=5.0)


async def test_jobs_start_in_the_order_they_were_submitted(rig: Rig) -> None:
    _, second, third = await rig.line_up("first", "second", "third")
    assert (second.positions, third.positions) == ([1], [2])
    assert await rig.status("second") is JobStatus.QUEUED

    rig.generator.finish("third")  # the last one is ready first: it still waits its turn
    rig.generator.finish("second")
    rig.generator.finish("first")
    await rig.done("first", "second", "third")

    assert rig.generator.started == ["first", "second", "third"]
    assert third.positions == [2, 1]  # told when it moved up
    for prompt in ("first", "second", "third"):
        assert await rig.status(prompt) is JobStatus.DELIVERED
        observer = rig.observers[prompt]
        assert observer.delivered is not None and observer.delivered.audio is not None
        assert observer.stages == ["generating", "processing", "delivering"]


async def test_a_server_at_its_limit_waits_while_another_server_starts(rig: Rig) -> None:
    rig.open(max_concurrent=3)
    await rig.submit("a1", guild_id=GUILD_A, guild_limit=1)
    a2 = await rig.submit("a2", guild_id=GUILD_A, guild_limit=1)
    await rig.submit("b1", guild_id=GUILD_B, guild_limit=1)
    await rig.generator.began("a1")
    await rig.generator.began("b1")
    await a2.told_queued.wait()
    assert rig.generator.started == ["a1", "b1"]  # a free global slot, but not for server A
    assert a2.positions == [1]

    rig.generator.finish("b1")
    await rig.done("b1")
    assert "a2" not in rig.generator.started  # server B's slot does not help server A

    rig.generator.finish("a1")
    await rig.generator.began("a2")
    rig.generator.finish("a2")
    await rig.done("a1", "a2")
    assert rig.generator.started == ["a1", "b1", "a2"]
    assert [await rig.status(p) for p in ("a1", "a2", "b1")] == [JobStatus.DELIVERED] * 3


async def test_cancel_while_queued_never_generates_and_leaves_the_queue(rig: Rig) -> None:
    _, queued, behind = await rig.line_up("running", "queued", "behind")

    assert rig.jobs.cancel(rig.ids["queued"], MODERATOR)
    await rig.done("queued")
    assert queued.cancelled_by == [MODERATOR]
    assert queued.failures == [] and queued.delivered is None
    assert await rig.status("queued") is JobStatus.CANCELLED
    assert behind.positions == [2, 1]  # moved up into the cancelled job's place
    assert rig.jobs.cancel(rig.ids["queued"], MODERATOR) is False  # gone from the manager

    rig.generator.finish("running")
    rig.generator.finish("behind")
    await rig.done("running", "behind")
    assert rig.generator.started == ["running", "behind"]
    assert await rig.status("behind") is JobStatus.DELIVERED


async def test_shutdown_interrupts_running_and_queued_jobs_and_refuses_new_ones(rig: Rig) -> None:
    running, queued = await rig.line_up("running", "queued")

    await rig.jobs.shutdown(grace_s=5.0)

    for prompt, observer in (("running", running), ("queued", queued)):
        assert await rig.status(prompt) is JobStatus.INTERRUPTED
        assert [type(e) for e in observer.failures] == [ShuttingDown]
        assert observer.delivered is None and observer.cancelled_by == []
        assert rig.tasks[prompt].done() and not rig.tasks[prompt].cancelled()
    assert rig.generator.started == ["running"]
    assert not rig.jobs.queue_has_room()
    with pytest.raises(ShuttingDown):
        await rig.submit("late")
