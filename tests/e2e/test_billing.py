"""The operator's budget counts what DashScope bills, end to end: the real bot, the offline Discord and the
simulator over real sockets, on a real SQLite file. A member who got no song gets their quota back; the
operator's counter keeps every second of audio the service generated (billing is per second of audio)."""

from __future__ import annotations

import re
from pathlib import Path

from services.offline.discord import FakeDiscord
from services.offline.payloads import MODERATOR_PERMISSIONS
from services.offline.simulator import Scenario
from tests.support.e2e import TOKEN, Harness, assert_refunded, running_bot, switch_scenario_at, wait_for_job

PROMPT = "a calm piano ballad about the sea"
EPHEMERAL = 64


async def answer(h: Harness, iid: int) -> str:
    """An immediate ephemeral answer: its text, embed fields included."""
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4 and callback.data["flags"] & EPHEMERAL, callback
    parts = [callback.data.get("content") or ""]
    for embed in callback.data.get("embeds", []):
        parts.extend(f"{f['name']}: {f['value']}" for f in embed.get("fields", []))
    return "\n".join(parts)


def seconds_received(h: Harness, iid: int) -> float:
    """The most audio a progress edit of this song reported as received."""
    found = [
        float(m.group(1))
        for edit in h.fake.edits(iid)
        if (m := re.search(r"Generating… (\d+) s of audio received", edit.content or ""))
    ]
    return max(found, default=0.0)


async def test_a_retry_that_streamed_audio_is_billed_on_top_of_the_song(tmp_path: Path) -> None:
    """The first request streams part of the song, then the connection drops; the retry delivers it. DashScope
    generated both, so the operator's counter holds the song's 2 s plus what the first attempt streamed, while the
    member's and the server's quotas hold only the delivered song."""
    first = Scenario(duration_s=2.0, chunk_bytes=4096, chunk_delay_s=0.05, drop_after_chunks=6)
    async with running_bot(tmp_path, scenario=first) as h:
        switch_scenario_at(h.sim, 2, Scenario(duration_s=2.0))
        await h.song({"prompt": PROMPT})
        job = await h.wait_job_status((await wait_for_job(h)).id, "delivered", "failed")
        assert job.status == "delivered" and len(h.sim.requests) == 2
        usage = await h.bot.services.policy.global_usage()
        assert usage.seconds_used == 2  # what the member received
        assert 3 <= usage.billed_seconds <= 4, usage  # plus the first attempt's ~1.5 s of streamed audio
        member = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert (member.songs_used, member.seconds_used) == (1, 2)


async def test_cancel_after_audio_arrived_refunds_the_member_but_counts_on_the_budget(tmp_path: Path) -> None:
    """A member cancels once audio has started arriving: their quota is refunded, but the seconds DashScope
    streamed stay on the operator's daily budget, so the next song no longer fits it; the operator's own server
    sees both figures in /songusage."""
    slow = Scenario(duration_s=4.0, chunk_bytes=2048, chunk_delay_s=0.1)
    async with FakeDiscord(token=TOKEN) as fake:
        env = {"SONGBOT_GLOBAL_DAILY_SECONDS": "10", "DEV_GUILD_ID": str(fake.guild.id)}
        async with running_bot(tmp_path, scenario=slow, fake=fake, **env) as h:
            await h.configure(cooldown=0)
            iid = await h.song({"prompt": PROMPT})
            await h.fake.wait_until(lambda: seconds_received(h, iid) >= 1, timeout=20, what="audio arriving")
            job = await wait_for_job(h)
            await h.fake.send_interaction(h.fake.click(f"song:cancel:{job.id}", h.fake.original(iid)))
            job = await h.wait_job_status(job.id, "cancelled")
            await assert_refunded(h, job.id)
            usage = await h.bot.services.policy.global_usage()
            assert usage.seconds_used == 0 and usage.billed_seconds >= 1, usage
            refused = await answer(h, await h.song({"prompt": PROMPT}))
            assert "left for today across all servers" in refused, refused
            assert len(h.sim.requests) == 1
            shown = await answer(h, await h.command("songusage", permissions=MODERATOR_PERMISSIONS))
            operator = next(line for line in shown.splitlines() if line.startswith("All servers (operator)"))
            assert f"Billed by DashScope: 0:{usage.billed_seconds:02d}" in operator
            assert "Delivered: 0 song(s), 0:00" in operator and "Daily budget: 0:10" in operator
