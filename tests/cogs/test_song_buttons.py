"""The /song form and the Cancel / Regenerate buttons, end to end: the real bot (its real start path) against the
offline Discord and the Fun-Music simulator over real sockets.

A button's custom id names a job, and a form's custom id carries the /song options: both are only claims, and both
must outlive the process. So: presses are checked against the job's server and owner; a press on a job that ended
says how it ended; a form submitted after a restart is still answered, with its options; and an error in a button
or form handler reaches the member as an error id, never as "interaction failed".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cogs._words import (
    CANCEL_NOT_YOURS,
    FORM_OUTDATED,
    REGENERATE_PRIVATE,
    SONG_NOT_HERE,
)
from services.offline.discord import FakeDiscord, StoredMessage
from services.offline.payloads import MODERATOR_PERMISSIONS
from services.offline.simulator import Scenario
from tests.support.e2e import TOKEN, Harness, error_id_of, running_bot, wait_for_job

EPHEMERAL = 64
PROMPT = "an upbeat summer folk song about a road trip"
LYRICS = "[verse]\nSecret words for nobody else\nHidden in the hallway\n\n[chorus]\nOnly mine, only mine"
SLOW = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.1)


async def _refusal(h: Harness, iid: int) -> str:
    """The immediate, ephemeral answer (callback type 4) to an interaction."""
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4, callback
    assert callback.data.get("flags", 0) & EPHEMERAL, callback
    return str(callback.data.get("content") or "")


async def _press(h: Harness, custom_id: str, message: StoredMessage, **kwargs: Any) -> int:
    click = h.fake.click(custom_id, message, **kwargs)
    await h.fake.send_interaction(click)
    return int(click["id"])


async def _progress_with_cancel(h: Harness, iid: int) -> tuple[int, StoredMessage]:
    """The job an interaction started and a snapshot of its progress message while it showed Cancel (what a member
    still sees on a message the bot can no longer edit)."""

    def found() -> StoredMessage | None:
        for snapshot in h.fake.edits(iid):
            if any(str(b.get("custom_id", "")).startswith("song:cancel:") for b in snapshot.buttons()):
                return snapshot
        return None

    await h.fake.wait_until(lambda: found() is not None, what=f"a Cancel button for {iid}")
    snapshot = found()
    assert snapshot is not None
    button = next(b for b in snapshot.buttons() if str(b.get("custom_id", "")).startswith("song:cancel:"))
    return int(str(button["custom_id"]).rsplit(":", 1)[1]), snapshot


async def _jobs_of(h: Harness, user_id: int) -> list[Any]:
    return list(await h.store.history(user_id, limit=50))


# --- buttons check what they act on -----------------------------------------------------------------------------


async def test_presses_from_another_server_or_by_a_moderator_elsewhere_are_refused(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        other_guild = fake.add_guild("Elsewhere")
        elsewhere = other_guild.channels[0]
        async with running_bot(tmp_path, scenario=SLOW, fake=fake) as h:
            iid = await h.song({"prompt": PROMPT})
            job_id, progress = await _progress_with_cancel(h, iid)
            cancel, regen = f"song:cancel:{job_id}", f"song:regen:{job_id}"
            # Manage Server in another server only: here an ordinary member, there a moderator
            mod_elsewhere = h.fake.add_user("mod-elsewhere")
            here = await _press(h, cancel, progress, user=mod_elsewhere)
            assert await _refusal(h, here) == CANCEL_NOT_YOURS
            there = await _press(
                h, cancel, progress, user=mod_elsewhere, channel=elsewhere, permissions=MODERATOR_PERMISSIONS
            )
            assert await _refusal(h, there) == SONG_NOT_HERE
            # a forged press from the other server acts on nothing, even by the song's own requester
            assert await _refusal(h, await _press(h, cancel, progress, channel=elsewhere)) == SONG_NOT_HERE
            # and from a stranger's DMs
            stranger = h.fake.add_user("stranger")
            dm = h.fake.state.dm_channel(stranger)
            assert await _refusal(h, await _press(h, cancel, progress, user=stranger, channel=dm)) == SONG_NOT_HERE
            # an unknown job reads the same as another server's: a forged id learns nothing
            made_up = h.fake.click(cancel, progress, permissions=MODERATOR_PERMISSIONS)
            made_up["data"]["custom_id"] = "song:cancel:987654"
            for row in made_up["message"]["components"]:
                for button in row["components"]:
                    button["custom_id"] = "song:cancel:987654"
            await h.fake.send_interaction(made_up)
            assert await _refusal(h, int(made_up["id"])) == SONG_NOT_HERE
            final = await h.wait_final(iid)
            assert final.attachments
            assert (await h.wait_job_status(job_id, "delivered")).status == "delivered"
            # Regenerate, pressed from the other server: no song made there on this server's job
            for kwargs in ({}, {"user": mod_elsewhere, "permissions": MODERATOR_PERMISSIONS}):
                forged = await _press(h, regen, final, channel=elsewhere, **kwargs)
                assert await _refusal(h, forged) == SONG_NOT_HERE
            assert len(h.sim.requests) == 1
            assert await _jobs_of(h, mod_elsewhere.id) == []
            # all the other server ever saw: the refusals, each only to its presser
            seen = h.fake.channel_messages(elsewhere, visible_to=mod_elsewhere)
            assert seen and all(m.ephemeral and m.content == SONG_NOT_HERE for m in seen), seen
            assert h.fake.channel_messages(elsewhere) == []


async def test_a_private_songs_regenerate_is_for_its_owner_only(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        iid = await h.song({"lyrics_file": h.fake.upload("mine.txt", LYRICS.encode()), "private": True})
        first = await h.wait_final(iid)
        assert first.ephemeral and first.attachments
        regen = next(str(b["custom_id"]) for b in first.buttons())
        stranger = h.fake.add_user("stranger")
        for kwargs in ({}, {"permissions": MODERATOR_PERMISSIONS}):
            pressed = await _press(h, regen, first, user=stranger, **kwargs)
            assert await _refusal(h, pressed) == REGENERATE_PRIVATE
        assert await _jobs_of(h, stranger.id) == []
        assert len(h.sim.requests) == 1
        seen = [m.text() for m in h.fake.channel_messages(h.fake.channel, visible_to=stranger)]
        seen += [c.data.get("content") or "" for r in h.fake.state.interactions.values() if (c := r.callback)]
        assert not any("Secret words" in text for text in seen if text), seen
        # the owner may, and the new song is private again
        mine = await _press(h, regen, first)
        callback = await h.fake.wait_for_callback(mine)
        assert callback.type == 5 and callback.data.get("flags", 0) & EPHEMERAL
        second = await h.wait_final(mine)
        assert second.ephemeral and second.attachments
        assert [r["body"]["input"]["lyrics"] for r in h.sim.requests] == [LYRICS, LYRICS]


async def test_regenerate_of_a_public_song_by_another_member_is_that_members_song(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        owner = h.fake.user
        iid = await h.song({"prompt": PROMPT, "voice": "male"})
        first = await h.wait_final(iid)
        regen = next(str(b["custom_id"]) for b in first.buttons())
        other = h.fake.add_user("other")
        theirs = await _press(h, regen, first, user=other)
        second = await h.wait_final(theirs)
        assert second.attachments and not second.ephemeral
        job = await wait_for_job(h, other.id)
        assert job.user_id == other.id and job.guild_id == h.fake.guild.id and job.id != int(regen.rsplit(":")[-1])
        assert h.sim.requests[1]["body"]["input"] == h.sim.requests[0]["body"]["input"]
        for member in (owner, other):
            usage = await h.bot.services.policy.member_usage(h.fake.guild.id, member.id)
            assert usage.songs_used == 1, (member.username, usage)
        # their cooldown, not the owner's quota: a second press at once is refused for them
        again = await _press(h, regen, first, user=other)
        assert "cooldown" in await _refusal(h, again)
        assert len(h.sim.requests) == 2


# --- a press on a job that ended says how it ended ----------------------------------------------------------------


async def test_cancel_on_a_song_that_ended_says_how_it_ended(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=SLOW) as h:
        await h.configure(cooldown=0)
        # delivered
        iid = await h.song({"prompt": PROMPT})
        job_id, progress = await _progress_with_cancel(h, iid)
        final = await h.wait_final(iid)
        assert final.attachments
        await h.wait_job_status(job_id, "delivered")
        text = await _refusal(h, await _press(h, f"song:cancel:{job_id}", progress))
        assert "already delivered" in text and f"/{final.id}" in text, text
        # cancelled
        iid = await h.song({"prompt": PROMPT})
        job_id, progress = await _progress_with_cancel(h, iid)
        await _press(h, f"song:cancel:{job_id}", progress)
        assert (await h.wait_final(iid)).content.startswith("🛑")
        await h.wait_job_status(job_id, "cancelled")
        text = await _refusal(h, await _press(h, f"song:cancel:{job_id}", progress))
        assert "already cancelled" in text, text
        # failed
        h.sim.scenario = Scenario(
            duration_s=3.0,
            chunk_bytes=2048,
            chunk_delay_s=0.1,
            mid_error="DataInspectionFailed",
            mid_error_after_chunks=5,
        )
        iid = await h.song({"prompt": PROMPT})
        job_id, progress = await _progress_with_cancel(h, iid)
        failed = await h.wait_final(iid)
        assert failed.content.startswith("❌")
        await h.wait_job_status(job_id, "failed")
        text = await _refusal(h, await _press(h, f"song:cancel:{job_id}", progress))
        assert "already failed" in text and error_id_of(failed.content) == error_id_of(text), text
        # a moderator pressing is told the same
        moderator = h.fake.add_user("moderator")
        pressed = await _press(h, f"song:cancel:{job_id}", progress, user=moderator, permissions=MODERATOR_PERMISSIONS)
        assert "already failed" in await _refusal(h, pressed)


async def test_cancel_after_a_restart_says_the_song_was_interrupted(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        long = Scenario(duration_s=20.0, chunk_bytes=2048, chunk_delay_s=0.2)
        async with running_bot(tmp_path, scenario=long, fake=fake) as h:
            iid = await h.song({"prompt": PROMPT})
            job_id, progress = await _progress_with_cancel(h, iid)
        async with running_bot(tmp_path, fake=fake) as h2:
            text = await _refusal(h2, await _press(h2, f"song:cancel:{job_id}", progress))
            assert "stopped when the bot restarted" in text and "refunded" in text, text
            assert (await h2.store.get_job(job_id)).status == "interrupted"


# --- the form outlives the process ------------------------------------------------------------------------------


async def test_the_form_submitted_after_a_restart_is_answered_with_its_options(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        async with running_bot(tmp_path, fake=fake) as h:
            await h.configure(cooldown=0)
            iid = await h.song({"voice": "male", "format": "ogg", "private": True})
            modal = (await h.fake.wait_for_callback(iid)).data
            assert modal["custom_id"] == "song:form:v=m:f=ogg:i=0:w=-:p=1" and len(modal["custom_id"]) <= 100
            other = h.fake.add_user("other")
            theirs = await h.song({"instrumental": True}, user=other)
            await h.fake.wait_for_callback(theirs)
        async with running_bot(tmp_path, fake=fake) as h2:
            # submitted in the other order, by two members, to a bot that never saw either form
            submit_other = h2.fake.submit_modal(theirs, {"Style / prompt": "a calm piano piece"})
            submit = h2.fake.submit_modal(iid, {"Style / prompt": "folk ballad", "Lyrics": LYRICS})
            await h2.fake.send_interaction(submit_other)
            await h2.fake.send_interaction(submit)
            callback = await h2.fake.wait_for_callback(int(submit["id"]))
            assert callback.type == 5 and callback.data.get("flags", 0) & EPHEMERAL  # private survived
            final = await h2.wait_final(int(submit["id"]))
            assert final.ephemeral and any(a.filename.endswith(".ogg") for a in final.attachments)
            assert (await h2.fake.wait_for_callback(int(submit_other["id"]))).type == 5
            assert (await h2.wait_final(int(submit_other["id"]))).attachments
            inputs = {r["body"]["input"].get("prompt"): r["body"]["input"] for r in h2.sim.requests}
            assert inputs["folk ballad"]["gender"] == "male" and inputs["folk ballad"]["lyrics"] == LYRICS
            assert inputs["folk ballad"]["format"] == "wav"  # ogg is made from wav
            assert inputs["a calm piano piece"]["is_instrumental"] is True


async def test_a_form_this_version_did_not_make_still_gets_an_answer(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        # the form of an older version: a random custom id, the same inputs
        legacy = h.fake.modal_submit("3f9a" * 8, {"song:prompt": "folk", "song:lyrics": ""}, form="row")
        await h.fake.send_interaction(legacy)
        assert await _refusal(h, int(legacy["id"])) == FORM_OUTDATED
        tampered = h.fake.modal_submit("song:form:v=x:f=exe:i=0:w=-:p=0", {"song:prompt": "folk"})
        await h.fake.send_interaction(tampered)
        assert await _refusal(h, int(tampered["id"])) == FORM_OUTDATED
        # a forged option on /song is refused before any form is shown
        iid = await h.song({"format": "exe"})
        assert "mp3" in await _refusal(h, iid)
        assert h.sim.requests == []


# --- errors in button and form handlers reach the member ----------------------------------------------------------


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug in a handler")


async def _error_answer(h: Harness, iid: int) -> str:
    """The error message an interaction got: at once, or in place of its "thinking…" message."""
    callback = await h.fake.wait_for_callback(iid)
    if callback.type == 4:
        assert callback.data.get("flags", 0) & EPHEMERAL, callback
        return str(callback.data.get("content") or "")
    await h.fake.wait_until(lambda: (m := h.fake.original(iid)) is not None and not m.loading, what="the error")
    message = h.fake.original(iid)
    assert message is not None
    return message.content


async def test_errors_in_buttons_and_the_form_reach_the_member_with_an_error_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(tmp_path, scenario=SLOW) as h:
        await h.configure(cooldown=0)
        iid = await h.song({"prompt": PROMPT})
        job_id, progress = await _progress_with_cancel(h, iid)
        first = await h.wait_final(iid)
        regen = f"song:regen:{job_id}"
        cog = h.bot.get_cog("SongCog")  # the class the extension loaded (load_extension imports its own copy)
        # what a command's unexpected error looks like
        with monkeypatch.context() as patch:
            patch.setattr(cog, "start_song", _boom)
            command_error = await _error_answer(h, await h.song({"prompt": PROMPT}))
        shape = re.sub(r"`[^`]+`", "`ID`", command_error)
        assert shape == "Something went wrong while making your song. (error id `ID`)", command_error
        answers: list[str] = []
        # the owner check (interaction_check) fails: the store is unreachable
        with monkeypatch.context() as patch:
            patch.setattr(h.store, "get_job", _boom)
            answers.append(await _error_answer(h, await _press(h, f"song:cancel:{job_id}", progress)))
            answers.append(await _error_answer(h, await _press(h, regen, first)))
        # a button callback raises before answering, and after its "thinking…"
        with monkeypatch.context() as patch:
            patch.setattr(cog, "regenerate_clicked", _boom)
            answers.append(await _error_answer(h, await _press(h, regen, first)))
        with monkeypatch.context() as patch:
            patch.setattr(h.bot.services.jobs, "submit", _boom)
            thinking = await _press(h, regen, first)
            answers.append(await _error_answer(h, thinking))
            assert (await h.fake.wait_for_callback(thinking)).type == 5
        # the form's handler raises
        with monkeypatch.context() as patch:
            patch.setattr(cog, "start_song", _boom)
            opened = await h.song({})
            await h.fake.wait_for_callback(opened)
            submit = h.fake.submit_modal(opened, {"Style / prompt": "folk"})
            await h.fake.send_interaction(submit)
            answers.append(await _error_answer(h, int(submit["id"])))
        for answer in answers:
            assert re.sub(r"`[^`]+`", "`ID`", answer) == shape, answer
            assert f"[error {error_id_of(answer)}]" in h.logs.text
        assert len({error_id_of(answer) for answer in answers}) == len(answers)
        # the song's message was never overwritten by an error
        song_message = h.fake.original(iid)
        assert song_message is not None and song_message.attachments
