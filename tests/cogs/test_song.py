"""/song end to end: the real bot (its real start path), the offline Discord and the simulator over real sockets."""

from __future__ import annotations

import asyncio
import functools
import itertools
from pathlib import Path
from typing import Any

from services.ffmpeg import probe_audio
from services.offline.payloads import BOT_PERMISSIONS, MODERATOR_PERMISSIONS, Perm
from services.offline.simulator import Scenario
from tests.services.test_audio import read_tags
from tests.support.e2e import Harness, running_bot

EPHEMERAL = 64
PROMPT = "an upbeat summer folk song about a road trip"


async def _write(path: Path, data: bytes) -> Path:
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def _refusal(h: Harness, iid: int) -> str:
    """The ephemeral, immediate answer to an interaction (callback type 4), which costs nothing."""
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4, callback
    assert callback.data["flags"] & EPHEMERAL
    assert h.sim.requests == []
    return str(callback.data["content"])


async def _job_id(h: Harness, iid: int) -> int:
    """The job started by an interaction, from the Cancel button on its progress message."""

    def has_cancel_button() -> bool:
        message = h.fake.original(iid)
        return message is not None and any(
            c.get("custom_id", "").startswith("song:cancel:")
            for row in message.components
            for c in row.get("components", [])
        )

    await h.fake.wait_until(has_cancel_button, what="a progress message with a Cancel button")
    message = h.fake.original(iid)
    assert message is not None
    button = next(c for row in message.components for c in row["components"] if c["custom_id"].startswith("song:"))
    return int(button["custom_id"].rsplit(":", 1)[1])


async def test_song_delivers_audio_lyrics_and_waveform(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT, "voice": "male"})
        callback = await h.fake.wait_for_callback(iid)
        assert callback.type == 5 and not callback.data.get("flags", 0) & EPHEMERAL
        assert callback.age < 3.0
        final = await h.wait_final(iid)
        audio = final.attachment(f"{PROMPT.replace(' ', '-')}.mp3")
        info = await probe_audio(await _write(tmp_path / "got.mp3", audio.data))
        assert abs(info.duration_s - 3.0) < 0.2 and info.channels == 2 and info.sample_rate == 48000
        lyrics = final.attachment("lyrics.txt").data.decode()
        tags = await read_tags(tmp_path / "got.mp3", "mp3")
        assert tags["title"] == PROMPT and tags["lyrics-und"].strip() == lyrics.strip()
        body = h.sim.requests[0]["body"]
        assert body["input"]["gender"] == "male" and body["input"]["prompt"] == PROMPT
        embed = final.embeds[0]
        assert lyrics.strip()[:200] in embed["description"]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["Voice"] == "Male" and fields["Duration"] == "0:03" and fields["Format"].startswith("MP3")
        assert fields["Request id"].strip("`") and embed["image"]["url"] == "attachment://waveform.png"
        assert final.attachment("waveform.png").data.startswith(b"\x89PNG")
        assert final.allowed_mentions == {"parse": []}
        regen = [c["custom_id"] for row in final.components for c in row["components"]]
        job = await h.wait_job_status(1, "delivered")
        assert regen == [f"song:regen:{job.id}"]
        assert job.message_id == final.id and job.request_id == fields["Request id"].strip("`")
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 1 and usage.seconds_used == 3


async def test_progress_is_shown_and_edits_are_throttled(tmp_path: Path) -> None:
    scenario = Scenario(duration_s=3.0, chunk_bytes=2048, chunk_delay_s=0.25)
    async with running_bot(tmp_path, scenario=scenario) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.wait_final(iid)
        edits = h.fake.edits(iid)
        texts = [e.content for e in edits]
        assert any("s of audio received" in t for t in texts), texts
        progress = [e for e in edits if not e.attachments]
        gaps = [b.at - a.at for a, b in itertools.pairwise(progress)]
        assert all(gap >= 2.0 for gap in gaps), gaps  # at most one progress edit every 2.5 s


async def test_private_song_is_ephemeral(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT, "private": True})
        callback = await h.fake.wait_for_callback(iid)
        assert callback.type == 5 and callback.data["flags"] & EPHEMERAL
        final = await h.wait_final(iid)
        assert final.ephemeral and final.attachments


async def test_song_without_options_opens_the_modal(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({})
        callback = await h.fake.wait_for_callback(iid)
        assert callback.type == 9
        labels = [c.get("label") for c in callback.data["components"]]
        assert labels == ["Style / prompt", "Lyrics"]
        empty = h.fake.submit_modal(iid, {})
        await h.fake.send_interaction(empty)
        assert "prompt or lyrics" in await _refusal(h, int(empty["id"]))
        iid = await h.song({})
        await h.fake.wait_for_callback(iid)
        lyrics = "[verse]\nSunlight on the water\nRoads that never end\n\n[chorus]\nSing it with me, friend"
        submit = h.fake.submit_modal(iid, {"Style / prompt": "folk ballad", "Lyrics": lyrics})
        await h.fake.send_interaction(submit)
        final = await h.wait_final(int(submit["id"]))
        assert final.attachments
        assert h.sim.requests[-1]["body"]["input"]["lyrics"] == lyrics


async def test_bad_input_is_refused_at_once_and_costs_nothing(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"prompt": "x " * 600}, "at most 1,000 characters"),
            ({"lyrics_file": h.fake.upload("song.pdf", b"%PDF-1.4")}, ".txt or .lrc"),
            ({"lyrics_file": h.fake.upload("song.txt", "café".encode("latin-1") * 10)}, "not UTF-8"),
            ({"lyrics_file": h.fake.upload("song.txt", b"x" * 20_000)}, "at most 16 KiB"),
            ({"lyrics_file": h.fake.upload("song.txt", b"hi")}, "5–2,000 characters; yours has 2"),
        ]
        for options, expected in cases:
            iid = await h.song(options)
            assert expected in await _refusal(h, iid), options
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 0


async def test_lrc_lyrics_file_is_read_without_timestamps(tmp_path: Path) -> None:
    lrc = "[ti:Road]\n[00:01.00][verse]\n[00:02.50]Open road ahead\n[00:05.00]Singing all the way\n"
    async with running_bot(tmp_path) as h:
        iid = await h.song({"lyrics_file": h.fake.upload("road.lrc", lrc.encode())})
        await h.wait_final(iid)
        sent = h.sim.requests[0]["body"]["input"]["lyrics"]
        assert sent == "[verse]\nOpen road ahead\nSinging all the way"


async def test_refuses_when_it_could_not_post_later(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT}, app_permissions=BOT_PERMISSIONS & ~Perm.ATTACH_FILES)
        assert "Attach Files" in await _refusal(h, iid)


async def test_only_the_send_permission_of_this_kind_of_channel_is_needed(tmp_path: Path) -> None:
    """``can_post_later`` asks for ``REQUIRED_PERMISSIONS`` less the send permission of the other kind of channel."""
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT}, app_permissions=BOT_PERMISSIONS & ~Perm.SEND_MESSAGES)
        assert "Send Messages" in await _refusal(h, iid)
        iid = await h.song({"prompt": PROMPT}, app_permissions=BOT_PERMISSIONS & ~Perm.SEND_MESSAGES_IN_THREADS)
        assert (await h.wait_final(iid)).attachments


async def test_cancel_by_requester_and_not_by_others(tmp_path: Path) -> None:
    slow = Scenario(duration_s=3.0, chunk_bytes=2048, chunk_delay_s=0.2)
    async with running_bot(tmp_path, scenario=slow) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await _job_id(h, iid)
        stranger = h.fake.add_user("stranger")
        click = h.fake.click(f"song:cancel:{job_id}", h.fake.original(iid), user=stranger)
        await h.fake.send_interaction(click)
        assert "Only the member who asked" in await _refusal_any(h, int(click["id"]))
        mine = h.fake.click(f"song:cancel:{job_id}", h.fake.original(iid))
        await h.fake.send_interaction(mine)
        final = await h.wait_final(iid)
        assert final.content.startswith("🛑 Cancelled by you")
        job = await h.wait_job_status(job_id, "cancelled")
        assert job.status == "cancelled"
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 0


async def test_moderator_can_cancel_a_members_song(tmp_path: Path) -> None:
    slow = Scenario(duration_s=3.0, chunk_bytes=2048, chunk_delay_s=0.2)
    async with running_bot(tmp_path, scenario=slow) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await _job_id(h, iid)
        moderator = h.fake.add_user("moderator")
        click = h.fake.click(
            f"song:cancel:{job_id}", h.fake.original(iid), user=moderator, permissions=MODERATOR_PERMISSIONS
        )
        await h.fake.send_interaction(click)
        final = await h.wait_final(iid)
        assert final.content.startswith(f"🛑 Cancelled by <@{moderator.id}>")


async def _refusal_any(h: Harness, iid: int) -> str:
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4 and callback.data["flags"] & EPHEMERAL
    return str(callback.data["content"])


async def test_regenerate_makes_the_same_song_again(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        iid = await h.song({"prompt": PROMPT, "voice": "male"})
        first = await h.wait_final(iid)
        click = h.fake.click("song:regen:1", first)
        await h.fake.send_interaction(click)
        callback = await h.fake.wait_for_callback(int(click["id"]))
        assert callback.type == 5
        second = await h.wait_final(int(click["id"]))
        assert second.attachments
        assert [r["body"]["input"] for r in h.sim.requests] == [h.sim.requests[0]["body"]["input"]] * 2
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 2


async def test_regenerate_works_after_a_restart(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        iid = await h.song({"prompt": PROMPT})
        first = await h.wait_final(iid)
        fake = h.fake
        await h.bot.close()
        async with running_bot(tmp_path, fake=fake) as h2:
            click = h2.fake.click("song:regen:1", first)
            await h2.fake.send_interaction(click)
            second = await h2.wait_final(int(click["id"]))
            assert second.attachments


async def test_song_too_large_for_the_limit_is_fitted_or_linked(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=Scenario(duration_s=3.0)) as h:
        await h.configure(cooldown=0)
        # a WAV of 3 s is ~576 KB; 200 KB forces the mp3 ladder
        iid = await h.song({"prompt": PROMPT, "format": "wav"}, attachment_size_limit=200_000)
        final = await h.wait_final(iid)
        audio = [a for a in final.attachments if a.filename.endswith((".mp3", ".wav"))]
        assert len(audio) == 1 and audio[0].filename.endswith(".mp3") and audio[0].size <= 200_000
        fields = {f["name"]: f["value"] for f in final.embeds[0]["fields"]}
        assert "would not fit" in fields["Format"]
        # nothing fits in 3 KB: lyrics and the url with its expiry instead
        iid = await h.song({"prompt": PROMPT}, attachment_size_limit=3_000)
        final = await h.wait_final(iid)
        assert not [a for a in final.attachments if a.filename.endswith((".mp3", ".wav"))]
        fields = {f["name"]: f["value"] for f in final.embeds[0]["fields"]}
        assert "/oss/" in fields["Download"] and "<t:" in fields["Download"]


async def test_ogg_is_transcoded(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT, "format": "ogg"})
        final = await h.wait_final(iid)
        audio = next(a for a in final.attachments if a.filename.endswith(".ogg"))
        info = await probe_audio(await _write(tmp_path / "got.ogg", audio.data))
        assert info.codec == "opus" and abs(info.duration_s - 3.0) < 0.2
        assert h.sim.requests[0]["body"]["input"]["format"] == "wav"


async def test_mentions_in_prompts_ping_nobody(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": "@everyone @here <@&123> a song for <@456> and friends"})
        final = await h.wait_final(iid)
        for message in h.fake.edits(iid):
            assert message.allowed_mentions == {"parse": []}
        assert final.allowed_mentions == {"parse": []}


async def test_cancel_while_queued_and_a_members_share_of_the_queue(tmp_path: Path) -> None:
    slow = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.15)
    async with running_bot(tmp_path, scenario=slow, MAX_CONCURRENT_GENERATIONS="1") as h:
        await h.configure(cooldown=0)
        other = h.fake.add_user("other")
        running = await h.song({"prompt": PROMPT}, user=other)
        await _job_id(h, running)
        queued = await h.song({"prompt": PROMPT})
        job_id = await _job_id(h, queued)
        await h.fake.wait_until(
            lambda: (m := h.fake.original(queued)) is not None and "Queued — position 1" in (m.content or ""),
            what="queued",
        )
        extra = await h.song({"prompt": PROMPT})
        await h.fake.wait_for_callback(extra)
        third = await h.song({"prompt": PROMPT})
        assert "already have 2 songs in progress" in await _refusal_any(h, third)
        click = h.fake.click(f"song:cancel:{job_id}", h.fake.original(queued))
        await h.fake.send_interaction(click)
        assert (await h.wait_final(queued)).content.startswith("🛑 Cancelled")
        assert (await h.wait_job_status(job_id, "cancelled")).status == "cancelled"
        assert (await h.wait_final(running)).attachments
        assert (await h.wait_final(extra)).attachments
        assert len(h.sim.requests) == 2  # the cancelled song never reached the service


async def test_slow_checks_defer_first_and_refusals_still_reach_only_the_member(tmp_path: Path) -> None:
    """With SONGBOT_DEFER_AFTER=0 every /song is deferred before its checks finish (as under a burst)."""
    async with running_bot(tmp_path, SONGBOT_DEFER_AFTER="0") as h:
        iid = await h.song({"prompt": PROMPT})
        assert (await h.fake.wait_for_callback(iid)).type == 5
        assert (await h.wait_final(iid)).attachments
        refused = await h.song({"prompt": PROMPT})  # on cooldown now
        assert (await h.fake.wait_for_callback(refused)).type == 5
        await h.fake.wait_until(lambda: h.fake.followups(refused), what="the ephemeral refusal")
        followup = h.fake.followups(refused)[0]
        assert followup.ephemeral and "cooldown" in followup.content
        original = h.fake.original(refused)
        assert original is None or original.deleted
        private = await h.song({"prompt": PROMPT, "private": True})
        await h.fake.wait_until(
            lambda: (m := h.fake.original(private)) is not None and "cooldown" in (m.content or ""),
            what="the private refusal",
        )
        refusal = h.fake.original(private)
        assert refusal is not None and refusal.ephemeral
        assert len(h.sim.requests) == 1


async def test_a_burst_defers_first_and_every_refusal_still_reaches_its_member(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(member_daily_songs=0)
        members = [h.fake.add_user(f"burst{i}") for i in range(8)]
        payloads = [h.fake.slash("song", {"prompt": PROMPT}, user=m) for m in members]
        await asyncio.gather(*(h.fake.send_interaction(p) for p in payloads))
        kinds = []
        for payload in payloads:
            iid = int(payload["id"])
            callback = await h.fake.wait_for_callback(iid)
            kinds.append(callback.type)
            if callback.type == 4:
                assert callback.data["flags"] & EPHEMERAL and "daily limit" in callback.data["content"]
            else:
                assert callback.type == 5
                await h.fake.wait_until(functools.partial(h.fake.followups, iid), what="the ephemeral refusal")
                followup = h.fake.followups(iid)[0]
                assert followup.ephemeral and "daily limit" in followup.content
        assert 5 in kinds  # past BURST_CHECKS at once, requests answer before their checks
        assert h.sim.requests == []
