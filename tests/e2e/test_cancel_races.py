"""Cancel against everything else that can happen to a running song, end to end over real sockets: the real bot,
the offline Discord, the simulator and a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from services.offline.simulator import Scenario
from tests.support.e2e import Harness, assert_refunded, running_bot

PROMPT = "an upbeat summer folk song about a road trip"


async def job_of(h: Harness, iid: int) -> int:
    """The job started by an interaction, from the Cancel button on its progress message."""

    def cancel_ids() -> list[str]:
        message = h.fake.original(iid)
        rows = message.components if message is not None else []
        return [
            c["custom_id"]
            for row in rows
            for c in row.get("components", [])
            if c.get("custom_id", "").startswith("song:cancel:")
        ]

    await h.fake.wait_until(cancel_ids, what="a progress message with a Cancel button")
    return int(cancel_ids()[0].rsplit(":", 1)[1])


async def test_cancel_in_the_instant_the_stream_fails_still_ends_with_the_failure_told(tmp_path: Path) -> None:
    """The stream fails and, while the job is on its failure path (the database is busy, so its refund waits),
    the member presses Cancel. The failure path finishes whatever the Cancel does: the member reads the failure,
    the Cancel button is gone, the quota is refunded and the job is failed."""
    scenario = Scenario(
        duration_s=3.0, chunk_bytes=2048, chunk_delay_s=0.1, mid_error="DataInspectionFailed", mid_error_after_chunks=4
    )
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await job_of(h, iid)
        async with h.store.write():  # another writer holds the database: the failure path waits on its refund
            await h.logged(f"job {job_id} failed [error")
            click = h.fake.click(f"song:cancel:{job_id}", h.fake.original(iid))
            await h.fake.send_interaction(click)
            await h.fake.wait_for_callback(int(click["id"]))
        final = await h.wait_final(iid)
        assert final.content.startswith("❌") and "moderation rejected" in final.content, final.content
        await h.fake.wait_until(
            lambda: (m := h.fake.original(iid)) is not None and not m.components, what="the Cancel button removed"
        )
        job = await h.wait_job_status(job_id, "failed", "cancelled")
        assert job.status == "failed"
        await assert_refunded(h, job_id)


async def test_after_songdata_delete_the_member_can_still_cancel_their_running_song(tmp_path: Path) -> None:
    """A member erases their data with /songdata delete while their song is generating: the stored text is gone
    at once, but they can still cancel it (the owner check needs their id until the job ends); once it has
    ended, their id is erased from it too."""
    slow = Scenario(duration_s=3.0, chunk_bytes=2048, chunk_delay_s=0.2)
    async with running_bot(tmp_path, scenario=slow) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await job_of(h, iid)
        erased = await h.command("songdata delete")
        assert "Erased" in str((await h.fake.wait_for_callback(erased)).data.get("content"))
        job = await h.store.get_job(job_id)
        assert (job.prompt, job.lyrics, job.options) == (None, None, {})
        await h.fake.send_interaction(h.fake.click(f"song:cancel:{job_id}", h.fake.original(iid)))
        final = await h.wait_final(iid)
        assert final.content.startswith("🛑 Cancelled by you"), final.content
        job = await h.wait_job_status(job_id, "cancelled")
        assert (job.user_id, job.prompt, job.url) == (None, None, None)
        assert await h.store.history(h.fake.user.id) == []
