"""Fault matrix, the process: the bot killed mid-job and restarted, and SIGTERM during a job.

Both run the real entry point, ``python bot.py``, as a child process against the offline Discord and the simulator
in this test process (on 127.0.0.1), with a real SQLite file in tmp_path; a kill is a real SIGKILL, so nothing of the
bot's graceful close runs. Rows: docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from services.clock import SystemClock
from services.offline.discord import FakeDiscord
from services.offline.simulator import Scenario
from services.store import Store
from tests.support.e2e import PROGRESS_MARKS, TOKEN, e2e_env, error_id_of, running_bot
from tests.support.processes import BotProcess, bot_process
from tests.support.sim_fixtures import running_simulator

PROMPT = "a sea shanty about a lost anchor"
#: About 16 s of streaming: the job is certainly still generating when the process is stopped.
SLOW = Scenario(duration_s=2.0, chunk_bytes=1024, chunk_delay_s=0.5)
RESTARTING = "The bot is restarting, so your song was stopped and your quota refunded"


@contextlib.asynccontextmanager
async def opened_store(env: Mapping[str, str]) -> AsyncIterator[Store]:
    """The bot's database, read from this process (the bot is not running)."""
    store = await Store.open(env["DATABASE_URL"], clock=SystemClock())
    try:
        yield store
    finally:
        await store.close()


def shown(fake: FakeDiscord, iid: int) -> str:
    """What the member sees on the interaction's original response now."""
    message = fake.original(iid)
    return message.content if message is not None else ""


def shows_progress(fake: FakeDiscord, iid: int) -> bool:
    """Whether the interaction's original response is a progress message (queued, generating, preparing, uploading)."""
    return shown(fake, iid).startswith(PROGRESS_MARKS)


async def start_song_in(bot: BotProcess, fake: FakeDiscord, sim: Any) -> int:
    """Send /song to the child bot and wait until it is generating (the simulator is streaming to it)."""
    await fake.wait_connected(timeout=30)
    payload = fake.slash("song", {"prompt": PROMPT})
    await fake.send_interaction(payload)
    iid = int(payload["id"])
    assert (await fake.wait_for_callback(iid, timeout=10)).type == 5, bot.text
    await fake.wait_until(
        lambda: bool(sim.requests) and "Generating" in shown(fake, iid),
        timeout=10,
        what="the job generating",
    )
    return iid


async def job_and_reservation(store: Store, user_id: int) -> tuple[Any, str | None]:
    (job,) = await store.history(user_id)
    async with store.read() as tx:
        reservation = await tx.reservation(job.id)
    return job, None if reservation is None else str(reservation.state)


async def test_killed_mid_job_then_restarted_marks_it_interrupted_refunds_and_edits_its_message(
    tmp_path: Path,
) -> None:
    async with running_simulator(SLOW) as sim, FakeDiscord(token=TOKEN) as fake:
        env = e2e_env(sim, fake, tmp_path, LOG_LEVEL="INFO")
        async with bot_process(env) as bot:
            iid = await start_song_in(bot, fake, sim)
            message = fake.original(iid)
            assert message is not None and message.components  # the live Cancel button
            bot.proc.kill()
            assert await asyncio.wait_for(bot.proc.wait(), 30) == -signal.SIGKILL
        member = fake.user.id
        async with opened_store(env) as store:
            job, reservation = await job_and_reservation(store, member)
            assert job.status == "generating" and reservation == "held"  # killed: nothing ran after
            assert job.interaction_token  # kept while it runs, for this restart
        job_dir = Path(env["SONGBOT_DATA_DIR"]) / "work" / f"job-{job.id}"
        assert await asyncio.to_thread(job_dir.is_dir)  # what the killed run was writing
        async with running_bot(tmp_path, fake=fake) as h:
            job = await h.store.get_job(job.id)
            assert job.status == "interrupted" and job.finished_at is not None
            assert job.interaction_token is None  # an ended job keeps no token
            assert not await asyncio.to_thread(job_dir.exists)  # its files removed at start
            assert (await h.bot.services.policy.member_usage(fake.guild.id, member)).songs_used == 0
            async with h.store.read() as tx:
                assert str((await tx.reservation(job.id)).state) == "refunded"
            # the token still lives: the progress message itself says what happened, and its Cancel is gone
            message = fake.original(iid)
            assert message is not None
            assert message.content.startswith("❌ The bot restarted") and "quota refunded" in message.content
            assert "/song" in message.content and not message.components
            assert not [m for m in fake.channel_messages(fake.channel) if m.webhook_id is None]
            assert "marked 1 interrupted job(s)" in h.logs.text


async def test_after_the_token_expired_members_are_told_where_their_song_was_asked_for(tmp_path: Path) -> None:
    """A public song: its channel, pinging the member. A private one: the member, by DM, never the channel. A
    member who erased their data (/songdata delete) before the kill: nobody, and the start carries on."""
    async with running_simulator(SLOW) as sim, FakeDiscord(token=TOKEN) as fake:
        public, private, erased = fake.user, fake.add_user("quiet"), fake.add_user("forgetful")
        env = e2e_env(sim, fake, tmp_path, LOG_LEVEL="INFO", MAX_CONCURRENT_GENERATIONS="3")
        async with bot_process(env) as bot:
            await fake.wait_connected(timeout=30)
            asked = []
            for user, options in ((public, {}), (private, {"private": True}), (erased, {})):
                payload = fake.slash("song", {"prompt": PROMPT, **options}, user=user)
                await fake.send_interaction(payload)
                asked.append(int(payload["id"]))
            for iid in asked:  # generating, or queued behind the server's concurrency limit
                await fake.wait_until(functools.partial(shows_progress, fake, iid), timeout=20)
            bot.proc.kill()
            assert await asyncio.wait_for(bot.proc.wait(), 30) == -signal.SIGKILL
        for iid in asked:
            fake.expire_token(iid)
        async with opened_store(env) as store:
            assert await store.delete_member_data(erased.id) == 1
        async with running_bot(tmp_path, fake=fake) as h:
            for user in (public, private, erased):
                usage = await h.bot.services.policy.member_usage(fake.guild.id, user.id)
                assert usage.songs_used == 0, (user.username, usage)
            told = [m for m in fake.channel_messages(fake.channel) if m.webhook_id is None]
            assert len(told) == 1, [m.content for m in told]
            assert told[0].content.startswith(f"<@{public.id}>") and "restarted" in told[0].content
            assert "quota refunded" in told[0].content and "/song" in told[0].content
            pings = told[0].pings()
            assert pings.users == {public.id} and not pings.roles and not pings.everyone
            (dm,) = fake.dms(private)
            assert "private song" in dm.content and "quota refunded" in dm.content
            assert not fake.dms(public) and not fake.dms(erased)
            assert "marked 3 interrupted job(s)" in h.logs.text
            assert "Traceback" not in h.logs.text


async def test_sigterm_during_a_job_tells_the_member_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    async with running_simulator(SLOW) as sim, FakeDiscord(token=TOKEN) as fake:
        env = e2e_env(sim, fake, tmp_path, LOG_LEVEL="INFO")
        async with bot_process(env) as bot:
            iid = await start_song_in(bot, fake, sim)
            bot.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.proc.wait(), 30) == 0, bot.text
        text = shown(fake, iid)
        assert text.startswith("❌ ") and RESTARTING in text, text
        error_id = error_id_of(text)
        assert f"interrupted by shutdown [error {error_id}]" in bot.text and "Traceback" not in bot.text
        async with opened_store(env) as store:
            job, reservation = await job_and_reservation(store, fake.user.id)
            assert job.status == "interrupted" and job.error_code == "shutdown" and job.error_id == error_id
            assert job.finished_at is not None and reservation == "refunded"
            assert await store.recover_interrupted() == []  # nothing was left for a restart to clean up
        assert not [m for m in fake.channel_messages(fake.channel) if m.webhook_id is None]
