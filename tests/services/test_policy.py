"""The enforcement chain, quota reservation and usage, on a real SQLite file (and PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cogs._words import refusal_text
from services.errors import PolicyRefusal
from services.guild_settings import DEFAULTS
from services.policy import MAX_JOBS_PER_MEMBER, Admission, Policy, QueuePlace, RefusalReason, RequestContext
from services.store import DM_GUILD, JobStatus, Store, Totals
from tests.support.clock import FakeClock
from tests.support.store_fixtures import DbTarget

GUILD = 7001
MOD = 900
MEMBER = 501
CHANNEL = 42
ROLE = 77
MIDNIGHT = datetime(2026, 1, 2, tzinfo=UTC)  # the FakeClock starts at 2026-01-01 12:00 UTC


def ctx(
    *,
    guild: int | None = GUILD,
    channel: int = CHANNEL,
    user: int = MEMBER,
    roles: tuple[int, ...] = (),
    manager: bool = False,
    seconds: int = 60,
) -> RequestContext:
    return RequestContext(guild, channel, user, roles, manager, seconds)


@dataclass
class Place:
    """The job queue's side of an admission (``services.jobs.Place``): the member's songs, and room or not."""

    room: bool = True
    songs: int = 0

    def member_songs(self) -> int:
        return self.songs

    def claim(self) -> bool:
        return self.room


room = Place()
no_room = Place(room=False)


async def admit(policy: Policy, request: RequestContext, queue: QueuePlace = room) -> Admission:
    return await policy.admit(request, prompt="a song", lyrics=None, options={"format": "mp3"}, place=queue)


async def refusal(policy: Policy, request: RequestContext, queue: QueuePlace = room) -> PolicyRefusal:
    with pytest.raises(PolicyRefusal) as refused:
        await admit(policy, request, queue)
    return refused.value


async def usage_of(store: Store, user: int = MEMBER, guild: int = GUILD) -> Totals:
    async with store.read() as tx:
        return await tx.member_totals(guild, user, store.clock.now().date())


@pytest.fixture
def policy(store: Store, clock: FakeClock) -> Policy:
    return Policy(store, clock, global_daily_seconds=None)


async def relax(store: Store, **changes: object) -> None:
    """No cooldown and generous quotas unless a test says otherwise."""
    await store.update_guild_settings(GUILD, MOD, {"cooldown": 0, **changes})


# --- each step and its words ------------------------------------------------------------------------------------


async def test_admission_creates_an_accepted_job_and_reserves(store: Store, policy: Policy, clock: FakeClock) -> None:
    admission = await admit(policy, ctx(seconds=95))
    job = await store.get_job(admission.job_id)
    assert job is not None
    assert (job.status, job.guild_id, job.channel_id, job.user_id, job.prompt, job.options) == (
        JobStatus.ACCEPTED,
        GUILD,
        CHANNEL,
        MEMBER,
        "a song",
        {"format": "mp3"},
    )
    assert (admission.reserved_songs, admission.reserved_seconds, admission.day) == (1, 95, clock.now().date())
    assert admission.settings == DEFAULTS
    assert await usage_of(store) == Totals(1, 95)


async def test_disabled(store: Store, policy: Policy) -> None:
    await store.update_guild_settings(GUILD, MOD, {"enabled": False})
    refused = await refusal(policy, ctx(manager=True))
    assert (refused.reason, refusal_text(refused), refused.retry_at) == (
        "disabled",
        "Song making is turned off in this server.",
        None,
    )


async def test_channel_not_allowed_even_for_managers(store: Store, policy: Policy) -> None:
    await relax(store)
    await store.add_channel(GUILD, MOD, 10)
    await store.add_channel(GUILD, MOD, 11)
    refused = await refusal(policy, ctx(channel=12, manager=True))
    assert refused.reason == RefusalReason.CHANNEL
    assert refusal_text(refused) == "Songs can't be made in this channel; use <#10>, <#11>."
    await admit(policy, ctx(channel=11))


async def test_long_channel_lists_are_shortened(store: Store, policy: Policy) -> None:
    await store.update_guild_settings(GUILD, MOD, {"channels": list(range(1, 9))})
    refused = await refusal(policy, ctx(channel=99))
    assert refusal_text(refused) == "Songs can't be made in this channel; use <#1>, <#2>, <#3>, <#4>, <#5> and 3 more."


async def test_role_not_allowed_but_managers_are_exempt(store: Store, policy: Policy) -> None:
    await relax(store)
    await store.add_role(GUILD, MOD, ROLE)
    refused = await refusal(policy, ctx(roles=(1, 2)))
    assert refused.reason == RefusalReason.ROLE
    assert refusal_text(refused) == f"Making songs here needs one of these roles: <@&{ROLE}>."
    await admit(policy, ctx(roles=(1, ROLE)))
    await admit(policy, ctx(roles=(), manager=True))


async def test_cooldown_message_and_retry_at(store: Store, policy: Policy, clock: FakeClock) -> None:
    started = clock.now()
    await admit(policy, ctx())
    clock.advance(20)
    refused = await refusal(policy, ctx())
    ends = int((started + timedelta(seconds=60)).timestamp())
    assert (refused.reason, refused.retry_at) == (RefusalReason.COOLDOWN, ends)
    assert refusal_text(refused) == f"You're on cooldown: you can make your next song <t:{ends}:R>."
    assert await policy.cooldown_ends(GUILD, MEMBER) == started + timedelta(seconds=60)
    await admit(policy, ctx(user=MEMBER + 1))  # someone else is not on this member's cooldown
    await admit(policy, ctx(guild=GUILD + 1))  # nor is this member in another server
    clock.advance(40)
    assert await policy.cooldown_ends(GUILD, MEMBER) is None
    await admit(policy, ctx())


async def test_member_daily_quota(store: Store, policy: Policy, clock: FakeClock) -> None:
    await relax(store, member_daily_songs=2)
    await admit(policy, ctx())
    await admit(policy, ctx())
    refused = await refusal(policy, ctx())
    midnight = int(MIDNIGHT.timestamp())
    assert (refused.reason, refused.retry_at) == (RefusalReason.MEMBER_QUOTA, midnight)
    assert refusal_text(refused) == (
        f"You've reached your daily limit of 2 songs in this server; it resets <t:{midnight}:R>."
    )
    await admit(policy, ctx(user=MEMBER + 1))


async def test_server_daily_songs(store: Store, policy: Policy) -> None:
    await relax(store, server_daily_songs=2)
    await admit(policy, ctx(user=1))
    await admit(policy, ctx(user=2))
    refused = await refusal(policy, ctx(user=3))
    assert refused.reason == RefusalReason.SERVER_SONGS
    assert refusal_text(refused) == (
        f"This server has reached its daily limit of 2 songs; it resets <t:{int(MIDNIGHT.timestamp())}:R>."
    )
    await admit(policy, ctx(user=3, guild=GUILD + 1))


async def test_server_daily_minutes(store: Store, policy: Policy) -> None:
    await relax(store, server_daily_minutes=5)
    await admit(policy, ctx(user=1, seconds=120))
    await admit(policy, ctx(user=2, seconds=120))
    refused = await refusal(policy, ctx(user=3, seconds=90))
    assert refused.reason == RefusalReason.SERVER_MINUTES
    reset = f"<t:{int(MIDNIGHT.timestamp())}:R>"
    assert refusal_text(refused) == (
        "This server has only 1 minute of its daily 5 minutes of music left, not enough for this song "
        f"(about 1.5 minutes); it resets {reset}."
    )
    await admit(policy, ctx(user=3, seconds=60))  # exactly the rest fits
    refused = await refusal(policy, ctx(user=4, seconds=1))
    assert refusal_text(refused) == f"This server has used its 5 minutes of music for today; it resets {reset}."


async def test_global_budget_spans_servers_and_dms(store: Store, clock: FakeClock) -> None:
    policy = Policy(store, clock, global_daily_seconds=300)
    await relax(store)
    await admit(policy, ctx(user=1, seconds=100))
    await admit(policy, ctx(user=2, guild=GUILD + 1, seconds=100))
    await admit(policy, ctx(user=3, guild=None, seconds=50))
    refused = await refusal(policy, ctx(user=4, seconds=51))
    reset = f"<t:{int(MIDNIGHT.timestamp())}:R>"
    assert (refused.reason, refused.retry_at) == (RefusalReason.GLOBAL_BUDGET, int(MIDNIGHT.timestamp()))
    assert refusal_text(refused) == (
        "The bot has only 50 seconds of music left for today across all servers, not enough for this song "
        f"(about 51 seconds); it resets {reset}."
    )
    await admit(policy, ctx(user=4, seconds=50))
    refused = await refusal(policy, ctx(user=5, seconds=1))
    assert refusal_text(refused) == (
        f"The bot has used its music budget for today across all servers; it resets {reset}."
    )
    usage = await policy.global_usage()
    assert (usage.songs_used, usage.seconds_used, usage.seconds_limit, usage.seconds_left) == (4, 300, 300, 0)


async def test_queue_full_is_last_and_writes_nothing(store: Store, policy: Policy, clock: FakeClock) -> None:
    refused = await refusal(policy, ctx(), queue=no_room)
    retry = int(clock.now().timestamp()) + 60  # about one song's generation (the estimate, at least a minute)
    assert (refused.reason, refused.retry_at, refusal_text(refused)) == (
        RefusalReason.QUEUE_FULL,
        retry,
        f"The song queue is full right now; try again <t:{retry}:R>.",
    )
    assert await usage_of(store) == Totals(0, 0)
    assert await store.history(MEMBER) == []


async def test_a_member_with_their_share_in_progress_is_refused_before_the_queue(store: Store, policy: Policy) -> None:
    """At most ``MAX_JOBS_PER_MEMBER`` songs queued or generating per member: refused by the policy (even when the
    queue is full too, so the member learns what they can change), writing nothing."""
    busy = Place(room=False, songs=MAX_JOBS_PER_MEMBER)
    refused = await refusal(policy, ctx(), busy)
    assert refused.reason == RefusalReason.MEMBER_BUSY and refused.retry_at is None
    assert refused.limit == MAX_JOBS_PER_MEMBER
    assert refusal_text(refused).startswith(f"You already have {MAX_JOBS_PER_MEMBER} songs in progress; wait for")
    assert await usage_of(store) == Totals(0, 0)
    assert await store.history(MEMBER) == []
    await admit(policy, ctx(), Place(songs=MAX_JOBS_PER_MEMBER - 1))


async def test_refusals_write_nothing_and_do_not_start_a_cooldown(store: Store, policy: Policy) -> None:
    await store.update_guild_settings(GUILD, MOD, {"member_daily_songs": 0})
    assert (await refusal(policy, ctx())).reason == RefusalReason.MEMBER_QUOTA
    await store.update_guild_settings(GUILD, MOD, {"member_daily_songs": 5})
    await admit(policy, ctx())


# --- the order --------------------------------------------------------------------------------------------------


async def test_the_order_first_refusal_wins(store: Store, clock: FakeClock) -> None:
    """Every rule is broken at once; lifting them one by one reveals the next, in the documented order."""
    policy = Policy(store, clock, global_daily_seconds=100)
    await admit(policy, ctx(seconds=60))  # starts the cooldown and uses 60 s of the global budget
    await store.update_guild_settings(
        GUILD,
        MOD,
        {
            "enabled": False,
            "channels": [1],
            "roles": [2],
            "member_daily_songs": 1,
            "server_daily_songs": 1,
            "server_daily_minutes": 1,
        },
    )
    request = ctx(channel=CHANNEL, roles=(), seconds=60)
    lifts: list[tuple[RefusalReason, dict[str, object]]] = [
        (RefusalReason.DISABLED, {"enabled": True}),
        (RefusalReason.CHANNEL, {"channels": []}),
        (RefusalReason.ROLE, {"roles": []}),
        (RefusalReason.COOLDOWN, {"cooldown": 0}),
        (RefusalReason.MEMBER_QUOTA, {"member_daily_songs": 10}),
        (RefusalReason.SERVER_SONGS, {"server_daily_songs": 10}),
        (RefusalReason.SERVER_MINUTES, {"server_daily_minutes": 10}),
    ]
    for reason, lift in lifts:
        assert (await refusal(policy, request, no_room)).reason == reason
        await store.update_guild_settings(GUILD, MOD, lift)
    assert (await refusal(policy, request, no_room)).reason == RefusalReason.GLOBAL_BUDGET
    policy = Policy(store, clock, global_daily_seconds=None)
    assert (await refusal(policy, request, no_room)).reason == RefusalReason.QUEUE_FULL
    await admit(policy, request)


async def test_direct_messages_only_have_member_quota_global_budget_and_queue(store: Store, clock: FakeClock) -> None:
    policy = Policy(store, clock, global_daily_seconds=1000)
    # Settings of "server 0" can't exist for DMs to read: only the code defaults apply.
    dm = ctx(guild=None, channel=5, seconds=10)
    for _ in range(DEFAULTS.member_daily_songs):
        await admit(policy, dm)  # no cooldown in DMs
    refused = await refusal(policy, dm)
    assert refused.reason == RefusalReason.MEMBER_QUOTA
    assert "daily limit of 5 songs in direct messages" in refusal_text(refused)
    usage = await policy.member_usage(None, MEMBER)
    assert (usage.songs_used, usage.songs_left, usage.seconds_used) == (5, 0, 50)
    assert await usage_of(store, guild=DM_GUILD) == Totals(5, 50)
    await admit(policy, ctx())  # a server's quota is separate from DMs


# --- atomic reservation -----------------------------------------------------------------------------------------


async def test_thirty_simultaneous_requests_never_exceed_the_member_quota(store: Store, policy: Policy) -> None:
    await relax(store, member_daily_songs=5)
    results = await asyncio.gather(*(admit(policy, ctx()) for _ in range(30)), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, PolicyRefusal)]
    assert len(accepted) == 5 and len(refused) == 25
    assert {r.reason for r in refused} == {RefusalReason.MEMBER_QUOTA}
    assert len({a.job_id for a in accepted}) == 5
    assert await usage_of(store) == Totals(5, 300)
    assert len(await store.history(MEMBER, limit=100)) == 5


async def test_thirty_simultaneous_requests_with_a_cooldown_admit_one(store: Store, policy: Policy) -> None:
    results = await asyncio.gather(*(admit(policy, ctx()) for _ in range(30)), return_exceptions=True)
    assert all(isinstance(r, Admission | PolicyRefusal) for r in results), results
    assert sum(isinstance(r, Admission) for r in results) == 1
    assert {r.reason for r in results if isinstance(r, PolicyRefusal)} == {RefusalReason.COOLDOWN}


async def test_two_processes_on_one_database_serialise_admission(
    db_target: DbTarget, store: Store, clock: FakeClock
) -> None:
    """A second Store (its own engine and pool, as a second bot process would have) shares the write lock:
    on SQLite that is BEGIN IMMEDIATE, on PostgreSQL the advisory lock."""
    await relax(store, member_daily_songs=4, server_daily_songs=6)
    other = await db_target.open(clock)
    try:
        policies = [Policy(store, clock, global_daily_seconds=None), Policy(other, clock, global_daily_seconds=None)]
        requests = [admit(policies[n % 2], ctx(user=MEMBER + n % 3)) for n in range(30)]
        results = await asyncio.gather(*requests, return_exceptions=True)
    finally:
        await other.close()
    assert sum(isinstance(r, Admission) for r in results) == 6
    unexpected = [r for r in results if not isinstance(r, Admission | PolicyRefusal)]
    assert unexpected == []
    server = await Policy(store, clock, global_daily_seconds=None).server_usage(GUILD)
    assert server.songs_used == 6
    assert all(m.songs <= 4 for m in server.top)


# --- refund, settle, day rollover -------------------------------------------------------------------------------


async def test_refund_on_failure_is_idempotent_and_frees_the_cooldown(store: Store, policy: Policy) -> None:
    await store.update_guild_settings(GUILD, MOD, {"member_daily_songs": 1})
    admission = await admit(policy, ctx(seconds=80))
    await store.transition(admission.job_id, JobStatus.FAILED, error_code="InternalError")
    assert await policy.refund(admission.job_id) is True
    assert await policy.refund(admission.job_id) is False
    assert await usage_of(store) == Totals(0, 0)
    # A failed song neither counts against the quota nor holds the cooldown: the member can try again at once.
    await admit(policy, ctx())


async def test_refund_on_cancel_keeps_the_cooldown(store: Store, policy: Policy, clock: FakeClock) -> None:
    admission = await admit(policy, ctx(seconds=80))
    await store.transition(admission.job_id, JobStatus.CANCELLED)
    assert await policy.refund(admission.job_id) is True
    assert await usage_of(store) == Totals(0, 0)
    assert (await refusal(policy, ctx())).reason == RefusalReason.COOLDOWN
    clock.advance(60)
    await admit(policy, ctx())


async def test_settle_replaces_the_estimate_with_actual_seconds(store: Store, policy: Policy) -> None:
    await relax(store)
    first = await admit(policy, ctx(seconds=120))
    second = await admit(policy, ctx(seconds=120))
    assert await usage_of(store) == Totals(2, 240)  # reserved but unsettled counts as used
    assert await policy.settle(first.job_id, 42.3) is True
    assert await usage_of(store) == Totals(2, 163)
    assert await policy.settle(first.job_id, 10) is False
    assert await usage_of(store) == Totals(2, 163)
    assert await policy.refund(second.job_id) is True
    assert await policy.settle(second.job_id, 30) is False  # a refunded job is never charged afterwards
    assert await usage_of(store) == Totals(1, 43)
    view = await policy.member_usage(GUILD, MEMBER)
    assert (view.songs_used, view.songs_left, view.seconds_used, view.songs_limit) == (1, 4, 43, 5)


async def test_day_rollover(store: Store, policy: Policy, clock: FakeClock) -> None:
    await relax(store, member_daily_songs=1)
    clock.set(datetime(2026, 1, 1, 23, 59, 30, tzinfo=UTC))
    late = await admit(policy, ctx(seconds=100))
    assert (await refusal(policy, ctx())).reason == RefusalReason.MEMBER_QUOTA
    clock.advance(31)  # 00:00:01 the next UTC day
    today = await policy.member_usage(GUILD, MEMBER)
    assert (today.day.isoformat(), today.songs_used, today.songs_left) == ("2026-01-02", 0, 1)
    assert today.resets_at == datetime(2026, 1, 3, tzinfo=UTC)
    # Settling yesterday's job charges yesterday, not today.
    assert await policy.settle(late.job_id, 90) is True
    assert await usage_of(store) == Totals(0, 0)
    await admit(policy, ctx())
    assert await usage_of(store) == Totals(1, 60)


async def test_moderator_changes_apply_at_once_and_cooldown_survives_restart(
    db_target: DbTarget, clock: FakeClock
) -> None:
    first = await db_target.open(clock)
    try:
        policy = Policy(first, clock, global_daily_seconds=None)
        await first.update_guild_settings(GUILD, MOD, {"cooldown": 600})
        await admit(policy, ctx())
        clock.advance(100)
        assert (await refusal(policy, ctx())).retry_at == int((clock.now() + timedelta(seconds=500)).timestamp())
    finally:
        await first.close()

    second = await db_target.open(clock)  # the bot restarted: the cooldown is in the database
    try:
        policy = Policy(second, clock, global_daily_seconds=None)
        assert (await refusal(policy, ctx())).reason == RefusalReason.COOLDOWN
        await second.update_guild_settings(GUILD, MOD, {"cooldown": 90})  # shorter now: already over
        await admit(policy, ctx())
        await second.update_guild_settings(GUILD, MOD, {"cooldown": 0})
        await admit(policy, ctx())
    finally:
        await second.close()


# --- restart recovery -------------------------------------------------------------------------------------------


async def test_recover_interrupted_marks_unfinished_jobs_and_refunds(db_target: DbTarget, clock: FakeClock) -> None:
    first = await db_target.open(clock)
    policy = Policy(first, clock, global_daily_seconds=None)
    await relax(first)
    done = await admit(policy, ctx(user=1, seconds=30))
    await first.transition(done.job_id, JobStatus.DELIVERED, duration_s=29.0)
    await policy.settle(done.job_id, 29.0)
    running = await admit(policy, ctx(user=2, seconds=60))
    await first.transition(running.job_id, JobStatus.GENERATING, request_id="req-9")
    queued = await admit(policy, ctx(user=3, seconds=60))
    await first.transition(queued.job_id, JobStatus.QUEUED)
    await first.close()

    clock.advance(30)
    second = await db_target.open(clock)
    try:
        recovered = await second.recover_interrupted()
        assert [(j.id, j.status, j.channel_id) for j in recovered] == [
            (running.job_id, JobStatus.INTERRUPTED, CHANNEL),
            (queued.job_id, JobStatus.INTERRUPTED, CHANNEL),
        ]
        assert all(j.finished_at == clock.now() for j in recovered)
        assert recovered[0].request_id == "req-9"
        assert await usage_of(second, user=2) == Totals(0, 0)
        assert await usage_of(second, user=3) == Totals(0, 0)
        assert await usage_of(second, user=1) == Totals(1, 29)
        assert await second.recover_interrupted() == []
        delivered = await second.get_job(done.job_id)
        assert delivered is not None and delivered.status == JobStatus.DELIVERED
    finally:
        await second.close()


# --- usage views ------------------------------------------------------------------------------------------------


async def test_server_usage_with_top_members(store: Store, policy: Policy) -> None:
    await relax(store, server_daily_minutes=60)
    for user, songs in ((1, 1), (2, 3), (3, 2)):
        for _ in range(songs):
            await admit(policy, ctx(user=user, seconds=30))
    usage = await policy.server_usage(GUILD, top=2)
    assert (usage.songs_used, usage.songs_limit, usage.songs_left) == (6, 50, 44)
    assert (usage.seconds_used, usage.seconds_limit, usage.seconds_left) == (180, 3600, 3420)
    assert [(m.user_id, m.songs, m.seconds) for m in usage.top] == [(2, 3, 90), (3, 2, 60)]
    assert usage.resets_at == MIDNIGHT


# --- privacy ----------------------------------------------------------------------------------------------------


async def test_delete_member_data_keeps_quotas_but_not_the_member(store: Store, policy: Policy) -> None:
    await relax(store, member_daily_songs=2)
    await store.add_channel(GUILD, MEMBER, CHANNEL)  # the member is also a moderator
    first = await admit(policy, ctx(seconds=40))
    await store.transition(first.job_id, JobStatus.DELIVERED, url="https://x/1.mp3")
    await policy.settle(first.job_id, 40)
    running = await admit(policy, ctx(seconds=40))
    await admit(policy, ctx(user=MEMBER + 1, seconds=40))

    assert await store.delete_member_data(MEMBER) == 2
    # the finished job is anonymised at once; the running one keeps only its owner (Cancel checks it) until it ends
    assert [j.id for j in await store.history(MEMBER)] == [running.job_id]
    job = await store.get_job(first.job_id)
    assert job is not None
    assert (job.user_id, job.prompt, job.lyrics, job.options, job.url) == (None, None, None, {}, None)
    job = await store.get_job(running.job_id)
    assert job is not None
    assert (job.user_id, job.prompt, job.lyrics, job.options, job.url) == (MEMBER, None, None, {}, None)
    assert [e.actor_id for e in await store.audit_log(GUILD) if e.key == "channels"] == [None]

    # The counts stay (anonymised): the server's totals and the member's own quota still hold.
    server = await policy.server_usage(GUILD)
    assert server.songs_used == 3
    assert [m.user_id for m in server.top] == [MEMBER + 1]
    assert (await policy.member_usage(GUILD, MEMBER)).songs_used == 2
    assert (await refusal(policy, ctx())).reason == RefusalReason.MEMBER_QUOTA
    # A job in flight at deletion still finishes and settles; what it stores on the way is not kept, and once it
    # ends its owner id is erased too.
    await store.transition(running.job_id, JobStatus.PROCESSING, url="https://x/2.mp3", duration_s=35.0)
    job = await store.get_job(running.job_id)
    assert job is not None and (job.user_id, job.url) == (MEMBER, None)
    await store.transition(running.job_id, JobStatus.DELIVERED)
    assert await policy.settle(running.job_id, 35) is True
    assert (await policy.member_usage(GUILD, MEMBER)).seconds_used == 75
    job = await store.get_job(running.job_id)
    assert job is not None and (job.user_id, job.prompt, job.url, job.duration_s) == (None, None, None, 35.0)
    assert await store.history(MEMBER) == []
    other = await store.history(MEMBER + 1)
    assert len(other) == 1 and other[0].prompt == "a song"


# --- what DashScope billed, and each server's queue -------------------------------------------------------------


async def test_global_budget_counts_what_was_billed_not_what_was_delivered(store: Store, clock: FakeClock) -> None:
    """A cancel after audio arrived (40 s streamed), a delivered song whose first attempt streamed 30 s before it
    broke (50 s song), and a job cancelled while queued (nothing streamed): the members got their quotas back
    where they got no song, but the operator's budget holds every billed second (40 + 30 + 50)."""
    policy = Policy(store, clock, global_daily_seconds=300)
    await relax(store)
    cancelled = await admit(policy, ctx(user=1, seconds=100))
    delivered = await admit(policy, ctx(user=2, seconds=100))
    queued = await admit(policy, ctx(user=3, guild=None, seconds=100))
    assert (await policy.global_usage()).billed_seconds == 300  # running jobs count their estimate
    assert await policy.refund(cancelled.job_id, billed_seconds=39.2) is True
    assert await policy.settle(delivered.job_id, 50, billed_seconds=80) is True
    assert await policy.refund(queued.job_id) is True
    assert await policy.refund(cancelled.job_id, billed_seconds=99) is False  # idempotent: nothing changes
    usage = await policy.global_usage()
    assert (usage.songs_used, usage.seconds_used, usage.billed_seconds, usage.seconds_left) == (1, 50, 120, 180)
    assert await usage_of(store, user=1) == Totals(0, 0)
    assert await usage_of(store, user=3, guild=DM_GUILD) == Totals(0, 0)
    refused = await refusal(policy, ctx(user=4, seconds=181))
    assert refused.reason == RefusalReason.GLOBAL_BUDGET and "only 3 minutes of music left" in refusal_text(refused)
    await admit(policy, ctx(user=4, seconds=180))


async def test_recovery_keeps_a_cautious_billed_figure(db_target: DbTarget, clock: FakeClock) -> None:
    """After a crash nobody knows what was billed: a song that had arrived counts its length, one that was
    generating its estimate, one still queued nothing; the members' quotas are all refunded."""
    first = await db_target.open(clock)
    policy = Policy(first, clock, global_daily_seconds=None)
    await relax(first)
    arrived = await admit(policy, ctx(user=1, seconds=60))
    await first.transition(arrived.job_id, JobStatus.PROCESSING, duration_s=41.5)
    generating = await admit(policy, ctx(user=2, seconds=60))
    await first.transition(generating.job_id, JobStatus.GENERATING)
    queued = await admit(policy, ctx(user=3, seconds=60))
    await first.transition(queued.job_id, JobStatus.QUEUED)
    await first.close()
    second = await db_target.open(clock)
    try:
        assert len(await second.recover_interrupted()) == 3
        async with second.read() as tx:
            held = [await tx.reservation(a.job_id) for a in (arrived, generating, queued)]
        billed = [None if r is None else r.billed_seconds for r in held]
        assert billed == [42, 60, 0]
        usage = await Policy(second, clock, global_daily_seconds=None).global_usage()
        assert (usage.songs_used, usage.billed_seconds) == (0, 102)
    finally:
        await second.close()


async def test_recovery_keeps_a_song_whose_delivered_write_was_lost(db_target: DbTarget, clock: FakeClock) -> None:
    """The song was posted and its quota settled, but the process died before "delivered" was written: at start
    it is marked delivered, not interrupted, and the member's quota is not refunded."""
    first = await db_target.open(clock)
    policy = Policy(first, clock, global_daily_seconds=None)
    await relax(first)
    posted = await admit(policy, ctx(user=1, seconds=60))
    await first.transition(posted.job_id, JobStatus.DELIVERING, duration_s=40.0)
    await policy.settle(posted.job_id, 40.0)
    await first.close()
    second = await db_target.open(clock)
    try:
        assert await second.recover_interrupted() == []
        job = await second.get_job(posted.job_id)
        assert job is not None and job.status == JobStatus.DELIVERED
        assert await usage_of(second, user=1) == Totals(1, 40)
    finally:
        await second.close()


async def test_each_server_bounds_its_own_queue_and_says_when_to_try_again(
    store: Store, policy: Policy, clock: FakeClock
) -> None:
    """max_queued counts the server's jobs admitted but not started (rows, so every process agrees); a full
    server refuses with a retry time, other servers and DMs are not affected, and a job starting frees a place."""
    await relax(store, max_queued=2)
    first = await admit(policy, ctx(user=1, seconds=200))
    await admit(policy, ctx(user=2, seconds=200))
    refused = await refusal(policy, ctx(user=3, seconds=200))
    retry = int(clock.now().timestamp()) + 200
    assert (refused.reason, refused.retry_at) == (RefusalReason.QUEUE_FULL, retry)
    assert refusal_text(refused) == f"This server already has 2 songs waiting in the queue; try again <t:{retry}:R>."
    await admit(policy, ctx(user=3, guild=GUILD + 1))
    await admit(policy, ctx(user=3, guild=None))
    await store.transition(first.job_id, JobStatus.GENERATING)
    await admit(policy, ctx(user=3, seconds=200))
