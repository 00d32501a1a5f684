"""Fault matrix, after the song was posted: the member's song is never taken back.

Once a delivery succeeded, what follows is bookkeeping (settling the quota, writing "delivered"). Its failures
are logged with an error id and retried; they never refund the song or edit the member's message into a failure.
The whole bot runs for real against the offline Discord and the simulator, on a real SQLite file.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from services.offline.discord_rest import StoredMessage
from services.offline.simulator import Scenario
from tests.support.e2e import Harness, reservation_state, running_bot, wait_for_job

PROMPT = "a slow jazz waltz about an old lighthouse keeper"
ORIGINAL = r"/messages/@original$"


def audio_of(message: StoredMessage) -> list[object]:
    return [a for a in message.attachments if a.filename.endswith((".mp3", ".wav", ".ogg"))]


def untouched_song(h: Harness, iid: int) -> StoredMessage:
    """The original response holds the song, and no later edit turned it into a failure or removed the audio."""
    message = h.fake.original(iid)
    assert message is not None and audio_of(message), message
    assert not message.content.startswith(("❌", "🛑")), message.content
    return message


async def test_job_already_ended_when_delivered_is_written_leaves_the_posted_song_alone(tmp_path: Path) -> None:
    """Another process marks the job interrupted while its song is being posted, so writing "delivered" raises
    JobStateError: that is logged with an error id, and the posted song, its buttons and the quota stay."""
    async with running_bot(tmp_path, scenario=Scenario(duration_s=2.0)) as h:
        h.fake.slow_next("PATCH", ORIGINAL, 1.0, times=None)
        iid = await h.song({"prompt": PROMPT})
        job = await h.wait_job_status((await wait_for_job(h)).id, "delivering")
        await h.store.transition(job.id, "interrupted", error_code="elsewhere")
        line = await h.logged("recording it as delivered failed")
        assert line.startswith("ERROR") and "JobStateError" in line and re.search(r"\[error \w+\]", line)
        message = untouched_song(h, iid)
        assert any(b["custom_id"].startswith("song:regen:") for b in message.buttons())
        assert await reservation_state(h, job.id) == "committed"  # the member's quota holds the delivered song
        assert "trying again" not in line  # the row cannot change by retrying
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 1


async def test_database_error_writing_delivered_is_retried_and_never_refunds(tmp_path: Path) -> None:
    """The database refuses the "delivered" write (a real SQLite error, raised by a trigger): the error is logged
    with its id, the write is tried again, and once the database works the job is delivered; the member's
    message is never edited into a failure and the quota is never refunded."""
    async with running_bot(tmp_path, scenario=Scenario(duration_s=2.0)) as h:
        async with h.store.write() as tx:
            await tx.conn.execute(
                sa.text(
                    "CREATE TRIGGER fail_delivered BEFORE UPDATE OF status ON jobs "
                    "WHEN NEW.status = 'delivered' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
                )
            )
        iid = await h.song({"prompt": PROMPT})
        await h.logged("recording it as delivered failed")
        job = await wait_for_job(h)
        assert (await h.store.get_job(job.id)).status == "delivering"
        untouched_song(h, iid)
        async with h.store.write() as tx:
            await tx.conn.execute(sa.text("DROP TRIGGER fail_delivered"))
        job = await h.wait_job_status(job.id, "delivered", "failed", timeout=30)
        original = h.fake.original(iid)
        assert original is not None
        assert job.status == "delivered" and job.message_id == original.id
        failures = [x for x in h.logs.lines if "recording it as delivered failed" in x]
        assert failures[0].startswith("ERROR") and "trying again in" in failures[0]
        assert re.search(r"\[error \w+\]", failures[0])
        untouched_song(h, iid)
        assert await reservation_state(h, job.id) == "committed"
        assert not [r for r in h.fake.find_requests("PATCH", ORIGINAL) if "❌" in str(r.json)]
