"""Fault matrix, Discord side: the whole bot, started for real, against an offline Discord that misbehaves.

Late callbacks, rate-limited and refused edits, uploads that are too large, expired interaction tokens, missing
channel permissions, closed DMs and a gateway that drops mid-job. Each test ends with the member told (or, where
Discord makes that impossible, a clear log line), the job's terminal state and the quota right. Rows: docs/faults.md.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import discord

from services.ffmpeg import probe_audio
from services.offline.discord_rest import StoredAttachment, StoredMessage
from services.offline.payloads import BOT_PERMISSIONS, Perm
from services.offline.simulator import Scenario
from tests.support.e2e import Harness, assert_refunded, error_id_of, reservation_state, running_bot, wait_for_job

PROMPT = "a slow jazz waltz about an old lighthouse keeper"


def song(**faults: Any) -> Scenario:
    """A 2 s song from the simulator, with `faults` (Scenario fields) switched on."""
    return Scenario(duration_s=2.0, **faults)


def slow(**faults: Any) -> Scenario:
    """A 2 s song streamed over about 4 s: long enough for a few progress edits."""
    return Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.25, **faults)


ORIGINAL = r"/messages/@original$"


def audio_of(message: StoredMessage) -> list[StoredAttachment]:
    return [a for a in message.attachments if a.filename.endswith((".mp3", ".wav", ".ogg"))]


async def decoded_seconds(tmp_path: Path, data: bytes, name: str) -> float:
    path = tmp_path / name
    await asyncio.to_thread(path.write_bytes, data)
    return (await probe_audio(path)).duration_s


async def delivered(h: Harness, how_channel: int | None = None) -> Any:
    job = await wait_for_job(h)
    job = await h.wait_job_status(job.id, "delivered", "failed")
    assert job.status == "delivered", (job.status, job.error_code)
    assert await reservation_state(h, job.id) == "committed"
    if how_channel is not None:
        assert job.channel_id == how_channel
    return job


# --- the callback --------------------------------------------------------------------------------------------


async def test_late_callback_10062_is_logged_refunded_and_the_bot_keeps_working(tmp_path: Path) -> None:
    """Discord answers a defer later than 3 s with 10062: nobody can be told on that interaction; the job is
    failed, its quota refunded, no song is paid for, and the next /song works."""
    async with running_bot(tmp_path, scenario=song()) as h:
        late = discord.utils.utcnow() - timedelta(seconds=5)
        iid = await h.song({"prompt": PROMPT}, created_at=late)
        await h.fake.wait_for_request("POST", r"/callback$", status=404)
        assert h.fake.callback(iid) is None
        job = await h.wait_job_status((await wait_for_job(h)).id, "failed")
        assert job.error_code == "defer"
        await assert_refunded(h, job.id)
        assert "could not defer" in h.logs.text and h.sim.requests == []
        # no crash: the next member's /song is made and delivered
        again = await h.song({"prompt": PROMPT})
        final = await h.wait_final(again)
        assert audio_of(final)


# --- rate limits on the progress edits -----------------------------------------------------------------------


async def test_progress_edits_under_a_rate_limit_are_slowed_and_the_song_delivered(tmp_path: Path) -> None:
    """A per-route limit of 1 edit per 3 s on @original (announced with X-RateLimit-* and 429s with Via, as
    Discord sends them): discord.py waits them out, the bot's progress edits queue behind, and the song arrives."""
    async with running_bot(tmp_path, scenario=slow()) as h:
        bucket = h.fake.limit_bucket("PATCH", ORIGINAL, limit=1, per=3.0)
        iid = await h.song({"prompt": PROMPT})
        final = await h.wait_final(iid, timeout=30)
        assert audio_of(final) and final.attachment("lyrics.txt")
        await delivered(h)
        # progress wants an edit every 2.5 s, the route allows one per 3 s: only waiting avoids a stream of 429s
        statuses = [r.status for r in h.fake.find_requests("PATCH", ORIGINAL)]
        assert len(statuses) >= 3 and bucket.limited <= 1, statuses


async def test_a_bare_429_on_a_progress_edit_doubles_the_interval_and_the_song_is_delivered(
    tmp_path: Path,
) -> None:
    """A 429 without Discord's Via header reaches the bot as an error (discord.py does not retry it): the
    progress editor backs off to one edit per 5 s instead of failing the job."""
    async with running_bot(tmp_path, scenario=slow()) as h:
        h.fake.fail_next("PATCH", ORIGINAL, 429, via=False, retry_after=1.0)
        iid = await h.song({"prompt": PROMPT})
        final = await h.wait_final(iid)
        assert audio_of(final)
        await delivered(h)
        assert "progress edits rate limited; now every 5.0 s" in h.logs.text
        statuses = [r.status for r in h.fake.find_requests("PATCH", ORIGINAL)]
        assert statuses[0] == 429 and statuses.count(429) == 1, statuses


async def test_every_edit_answered_429_still_gets_the_song_to_the_member(tmp_path: Path) -> None:
    """@original answers every edit with a bare 429: progress backs off, and the finished song is posted in the
    channel (bot token, mentioning the requester) instead of being lost."""
    async with running_bot(tmp_path, scenario=song()) as h:
        h.fake.fail_next("PATCH", ORIGINAL, 429, via=False, times=None, retry_after=1.0)
        await h.song({"prompt": PROMPT})
        job = await delivered(h, how_channel=h.fake.channel.id)
        post = h.fake.message(job.message_id)
        assert audio_of(post) and post.content.startswith(f"<@{h.fake.user.id}>")
        assert "could not edit in the result" in h.logs.text


# --- uploads that are too large --------------------------------------------------------------------------------


async def test_413_on_the_upload_is_retried_with_a_smaller_file(tmp_path: Path) -> None:
    """Discord refuses the upload although the interaction's limit said it fits (the real limit is lower):
    the audio is fitted again, smaller, and delivered in the same message."""
    async with running_bot(tmp_path, scenario=song()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_callback(iid)
        full = len(await _sim_audio(h))
        h.fake.interaction(iid).size_limit = int(full * 0.85)  # what Discord really accepts
        final = await h.wait_final(iid)
        refused = [r for r in h.fake.find_requests("PATCH", ORIGINAL) if r.status == 413]
        assert refused and refused[0].code == 40005
        (audio,) = audio_of(final)
        assert audio.size <= full * 0.85 < full
        seconds = await decoded_seconds(tmp_path, audio.data, audio.filename)
        assert abs(seconds - 2.0) < 0.2
        assert "refused (413); fitting smaller" in h.logs.text
        await delivered(h)


async def test_413_on_every_audio_upload_ends_with_the_link_and_its_expiry(tmp_path: Path) -> None:
    """Discord refuses any audio the bot can make: the song arrives as lyrics and the url with its expiry."""
    async with running_bot(tmp_path, scenario=song()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_callback(iid)
        h.fake.interaction(iid).size_limit = 2000  # below the smallest mp3 of a 2 s song
        final = await h.wait_final(iid)
        assert not audio_of(final)
        fields = {f["name"]: f["value"] for f in final.embeds[0]["fields"]}
        assert "/oss/" in fields["Download"] and "<t:" in fields["Download"] and ":R>" in fields["Download"]
        assert final.attachment("lyrics.txt").data.decode().strip()
        assert [r.status for r in h.fake.find_requests("PATCH", ORIGINAL)].count(413) >= 1
        await delivered(h)


async def _sim_audio(h: Harness) -> bytes:
    """The simulator's audio for the song in flight (its cache holds what it streams)."""
    from services.offline.simulator import cached_audio

    scenario = h.sim.scenario
    return await cached_audio(scenario.duration_s, scenario.sample_rate, scenario.channels, "mp3")


# --- the interaction token expires ---------------------------------------------------------------------------


def assert_mentions_only(message: StoredMessage, user_id: int) -> None:
    pings = message.pings()
    assert pings.users == {user_id} and not pings.roles and not pings.everyone, pings
    allowed = message.allowed_mentions or {}
    assert "everyone" not in (allowed.get("parse") or []) and "roles" not in (allowed.get("parse") or [])
    assert [int(u) for u in allowed.get("users") or []] == [user_id]


async def test_expired_token_posts_the_song_in_the_channel_mentioning_only_the_requester(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=slow()) as h:
        iid = await h.song({"prompt": "a song for @everyone and <@&1234>"})
        await h.fake.wait_for_request("PATCH", ORIGINAL, status=200)  # a first progress edit
        h.fake.expire_token(iid)
        member = h.fake.user.id
        await h.fake.wait_until(
            lambda: any(audio_of(m) for m in h.fake.channel_messages(h.fake.channel)), timeout=20, what="a post"
        )
        (post,) = [m for m in h.fake.channel_messages(h.fake.channel) if audio_of(m)]
        assert post.content.startswith(f"<@{member}>") and post.webhook_id is None  # the bot's own token
        assert_mentions_only(post, member)
        assert any(r.status == 401 and r.code == 50027 for r in h.fake.find_requests("PATCH", ORIGINAL))
        job = await delivered(h, how_channel=h.fake.channel.id)
        assert job.message_id == post.id


async def test_failure_after_the_token_expired_is_told_in_the_channel(tmp_path: Path) -> None:
    scenario = slow(mid_error="DataInspectionFailed", mid_error_after_chunks=8)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_request("PATCH", ORIGINAL, status=200)
        h.fake.expire_token(iid)
        await h.fake.wait_until(
            lambda: any("❌" in m.content for m in h.fake.channel_messages(h.fake.channel)), timeout=20
        )
        (told,) = [m for m in h.fake.channel_messages(h.fake.channel) if "❌" in m.content]
        assert "moderation rejected" in told.content
        assert error_id_of(told.content) in h.logs.text
        assert_mentions_only(told, h.fake.user.id)
        job = await h.wait_job_status((await wait_for_job(h)).id, "failed")
        await assert_refunded(h, job.id)


async def test_no_permission_in_the_channel_after_expiry_delivers_by_dm(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=slow()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_request("PATCH", ORIGINAL, status=200)
        h.fake.expire_token(iid)
        await h.fake.set_bot_permissions(h.fake.channel, BOT_PERMISSIONS & ~Perm.SEND_MESSAGES)
        await h.fake.wait_until(lambda: any(audio_of(m) for m in h.fake.dms(h.fake.user)), timeout=20, what="a DM")
        (dm,) = h.fake.dms(h.fake.user)
        assert dm.content.startswith(f"<@{h.fake.user.id}>") and dm.attachment("lyrics.txt")
        refused = [r for r in h.fake.find_requests("POST", r"/channels/\d+/messages$") if r.status == 403]
        assert refused and refused[0].code == 50013
        assert "could not deliver by channel" in h.logs.text
        await delivered(h)
        assert not [m for m in h.fake.channel_messages(h.fake.channel) if m.webhook_id is None]


async def test_no_channel_and_closed_dms_is_a_logged_clear_failure(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=slow()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_request("PATCH", ORIGINAL, status=200)
        h.fake.expire_token(iid)
        await h.fake.set_bot_permissions(h.fake.channel, BOT_PERMISSIONS & ~Perm.SEND_MESSAGES)
        h.fake.close_dms(h.fake.user)
        job = await h.wait_job_status((await wait_for_job(h)).id, "failed", timeout=20)
        assert job.error_code == "DeliveryFailed" and job.error_id
        await assert_refunded(h, job.id)
        errors = [line for line in h.logs.lines if line.startswith("ERROR") and f"job {job.id}" in line]
        assert errors and "could not be told" in errors[-1] and job.error_id in h.logs.text
        assert "could not deliver by channel" in h.logs.text and "could not deliver by dm" in h.logs.text
        dm_refusals = [r for r in h.fake.find_requests("POST", r"/channels/\d+/messages$") if r.code == 50007]
        assert dm_refusals


# --- the gateway ---------------------------------------------------------------------------------------------


async def test_gateway_drop_and_resume_mid_job_still_delivers(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=slow()) as h:
        await h.configure(cooldown=0)
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_request("PATCH", ORIGINAL, status=200)
        await h.fake.drop_gateway(resume=True, abrupt=True)
        final = await h.wait_final(iid)
        assert audio_of(final)
        await delivered(h)
        await h.fake.wait_until(lambda: h.fake.gateway.resume_count >= 1 and h.fake.gateway.connected)
        assert h.fake.gateway.identify_count == 1
        # the resumed session still takes commands
        h.sim.scenario = song()
        again = await h.song({"prompt": PROMPT})
        assert audio_of(await h.wait_final(again))


# --- the network fails mid-upload ----------------------------------------------------------------------------

CHANNEL_POST = r"/channels/\d+/messages$"


async def test_connection_dropped_mid_upload_moves_down_the_ladder_to_the_dm(tmp_path: Path) -> None:
    """Every edit of @original and the channel post lose their connection mid-upload (no HTTP answer at all):
    each route catches the network error and the song arrives by DM, delivered and counted once."""
    async with running_bot(tmp_path, scenario=song()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_callback(iid)
        h.fake.drop_next("PATCH", ORIGINAL, times=None)
        channel = h.fake.channel.id
        h.fake.drop_next("POST", rf"/channels/{channel}/messages$")
        job = await delivered(h)
        (dm,) = h.fake.dms(h.fake.user)
        assert audio_of(dm) and dm.content.startswith(f"<@{h.fake.user.id}>")
        assert job.message_id == dm.id
        assert "could not edit in the result (network" in h.logs.text
        assert "could not deliver by channel" in h.logs.text


async def test_every_upload_dropped_still_posts_the_download_link(tmp_path: Path) -> None:
    """No upload gets through anywhere (the original, the channel, the DM all drop the connection): the last
    route is the download link, posted as a follow-up (here it replaces the "thinking…" message, which no progress
    edit reached); the member sees it, and the job is delivered, not refunded."""
    async with running_bot(tmp_path, scenario=song()) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_callback(iid)
        h.fake.drop_next("PATCH", ORIGINAL, times=None)
        h.fake.drop_next("POST", CHANNEL_POST, times=None)
        job = await delivered(h)
        link = h.fake.message(job.message_id)
        assert "/oss/" in link.content and "download it" in link.content and "<t:" in link.content
        assert not link.attachments and not link.ephemeral and not link.loading and not link.deleted
        assert [r.status for r in h.fake.find_requests("POST", r"/webhooks/")] == [200]
        assert "could not deliver by dm" in h.logs.text
        drops = [r for r in h.fake.requests if r.dropped and r.method == "POST" and re.search(CHANNEL_POST, r.path)]
        assert len(drops) == 2  # the channel and the DM were both tried
