"""The queue's bounds end to end: a busy bot's global bound, and each server's own (``max_queued``).

The real bot, the offline Discord with several servers, and the simulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from services.offline.discord import FakeDiscord
from services.offline.simulator import Scenario
from services.settings import load_settings
from tests.support.e2e import TOKEN, running_bot

PROMPT = "an upbeat summer folk song about a road trip"
#: Songs that take a while, so everything admitted in a burst is still queued when the test looks.
SLOW = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.5)


def test_the_global_bound_fits_a_busy_bot() -> None:
    settings = load_settings({"DISCORD_TOKEN": "x", "DASHSCOPE_API_KEY": "y"})
    assert settings.queue_size >= 200


async def test_thirty_members_in_three_servers_pressing_song_together_are_all_queued(tmp_path: Path) -> None:
    """Thirty members, ten in each of three servers, each within every quota, press /song at the same moment.
    With the default bounds every one of them is accepted (two generate, the rest wait in the queue)."""
    async with FakeDiscord(token=TOKEN) as fake:
        guilds = [fake.guild, fake.add_guild("second"), fake.add_guild("third")]
        async with running_bot(tmp_path, scenario=SLOW, fake=fake) as h:
            presses = [(guild, h.fake.add_user(f"member{g}-{i}")) for g, guild in enumerate(guilds) for i in range(10)]
            ids = await asyncio.gather(
                *(
                    h.song({"prompt": PROMPT}, user=user, guild=guild, channel=guild.channels[0])
                    for guild, user in presses
                )
            )
            outcomes = [await h.outcome(iid) for iid in ids]
            refused = [text for ok, text in outcomes if not ok]
            assert refused == [], refused
            assert h.bot.services.jobs.active_jobs == 30


async def test_a_full_server_queue_says_when_to_try_again_and_other_servers_carry_on(tmp_path: Path) -> None:
    """One server's queue is full at its moderators' bound (max_queued 2): its next member is told when to try
    again, in Discord's relative time; a member of another server is still queued."""
    async with FakeDiscord(token=TOKEN) as fake:
        other = fake.add_guild("other")
        async with running_bot(tmp_path, scenario=SLOW, fake=fake, MAX_CONCURRENT_GENERATIONS="1") as h:
            await h.configure(max_queued=2)
            members = [h.fake.add_user(f"member{i}") for i in range(4)]
            first = await h.song({"prompt": PROMPT}, user=members[0])
            assert (await h.outcome(first))[0]
            await h.fake.wait_until(lambda: len(h.sim.requests) == 1, what="the first song generating")
            for member in members[1:3]:
                assert (await h.outcome(await h.song({"prompt": PROMPT}, user=member)))[0]
            ok, text = await h.outcome(await h.song({"prompt": PROMPT}, user=members[3]))
            assert not ok
            assert re.fullmatch(r"This server already has 2 songs waiting in the queue; try again <t:\d+:R>\.", text)
            elsewhere = h.fake.add_user("elsewhere")
            iid = await h.song({"prompt": PROMPT}, user=elsewhere, guild=other, channel=other.channels[0])
            assert (await h.outcome(iid))[0]
