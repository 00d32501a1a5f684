"""Security and abuse, end to end: the real bot against the offline Discord and the Fun-Music simulator.

Secrets never reach a log line or Discord; user text pings nobody; moderator commands refuse members without
Manage Server whatever the client shows; hostile input is refused in words before any API call; downloads go
only where they may; and a member spamming /song or the buttons gets no more than their quota and their share.

The download rules are mostly proven at unit level in tests/services/funmusic/test_client.py
(``test_download_from_a_foreign_host_is_refused``, ``test_redirect_to_a_foreign_host_is_refused``,
``test_download_over_the_cap``, ``test_redirect_loop_stops``, ``test_allowed_download_hosts``); this file adds
only the tricks those leave out.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
import time
import unicodedata
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from blockbuster import BlockingError

from cogs.song._delivery import DiscordJobObserver
from services.errors import DownloadError, InvalidInput
from services.funmusic.client import FunMusicClient
from services.funmusic.request import GenerationRequest
from services.guild_settings import DEFAULTS
from services.logs import REDACTED
from services.offline.discord_rest import Recorded
from services.offline.payloads import MEMBER_PERMISSIONS, MODERATOR_PERMISSIONS, Perm
from services.offline.simulator import FunMusicSimulator, Scenario
from services.policy import MAX_JOBS_PER_MEMBER
from services.settings import Secret
from services.song_request import decode_lyrics_file
from services.store import JobStatus
from tests.support.e2e import TOKEN, Harness, LogCapture, bot_logging, running_bot
from tests.support.sim_fixtures import SIM_KEY, make_client
from tests.support.watchdog import Findings, guarding, watching_loop

EPHEMERAL = 64
PROMPT = "an upbeat summer folk song about a road trip"
LYRICS = "[verse]\nSunlight on the water\nRoads that never end\n\n[chorus]\nSing it with me, friend"
SLOW = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.1)
NOT_A_MODERATOR = "Only members with the Manage Server permission"


# --- helpers ----------------------------------------------------------------------------------------------------


async def _refusal(h: Harness, iid: int) -> str:
    """The immediate, ephemeral answer (callback type 4) to an interaction: its text, embeds included."""
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4, callback
    assert callback.data.get("flags", 0) & EPHEMERAL, callback
    parts = [callback.data.get("content") or ""]
    for embed in callback.data.get("embeds", []):
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
    return "\n".join(parts)


async def _job_id(h: Harness, iid: int) -> int:
    """The job an interaction started, read off the Cancel button of its progress message."""

    def cancel_id() -> str | None:
        message = h.fake.original(iid)
        for button in message.buttons() if message else []:
            if str(button.get("custom_id", "")).startswith("song:cancel:"):
                return str(button["custom_id"])
        return None

    await h.fake.wait_until(lambda: cancel_id() is not None, what=f"a Cancel button for {iid}")
    return int(str(cancel_id()).rsplit(":", 1)[1])


async def _songs_used(h: Harness, user_id: int) -> int:
    usage = await h.bot.services.policy.member_usage(h.fake.guild.id, user_id)
    return int(usage.songs_used)


def _message_bodies(requests: list[Recorded]) -> Iterator[tuple[Recorded, dict[str, Any]]]:
    """Every request that creates or edits a message, with the message part of its body."""
    for request in requests:
        body = request.json
        if not isinstance(body, dict) or request.method not in ("POST", "PATCH"):
            continue
        if request.path.endswith("/callback"):
            if body.get("type") not in (4, 7):  # 5/6 defer, 9 a modal: no message text
                continue
            body = body.get("data") or {}
        if any(key in body for key in ("content", "embeds", "components", "attachments")):
            yield request, body


# --- secrets ----------------------------------------------------------------------------------------------------


@pytest.fixture
def real_log_setup() -> Iterator[LogCapture]:
    """The bot's own logging set-up with a capturing handler, undone afterwards."""
    with bot_logging() as capture:
        yield capture


async def test_secrets_never_reach_logs_or_discord(tmp_path: Path, real_log_setup: LogCapture) -> None:
    raw = LogCapture()  # before any redacting handler: what the code itself tries to log
    root = logging.getLogger()
    root.handlers.insert(0, raw)
    try:
        await _run_flows_that_could_leak(tmp_path, real_log_setup, raw)
    finally:
        root.removeHandler(raw)


async def _run_flows_that_could_leak(tmp_path: Path, real_log_setup: LogCapture, raw: LogCapture) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.command("songconfig set", {"cooldown": 0}, permissions=MODERATOR_PERMISSIONS)
        assert "→" in await _refusal(h, iid)
        iid = await h.song({"prompt": PROMPT})
        assert (await h.wait_final(iid)).attachments
        iid = await h.song({"lyrics_file": h.fake.upload("words.txt", LYRICS.encode())})  # the download path
        assert (await h.wait_final(iid)).attachments
        for failure in (
            Scenario(duration_s=2.0, pre_error="InvalidApiKey"),
            Scenario(duration_s=2.0, pre_error="InternalError"),
            Scenario(duration_s=2.0, mid_error="DataInspectionFailed"),
        ):
            h.sim.scenario = failure
            iid = await h.song({"prompt": PROMPT})
            assert (await h.wait_final(iid)).content.startswith("❌")
        # a line that would leak them, from a bot logger, with a traceback that holds them too
        log = logging.getLogger("cogs.song")
        log.warning("leak check: token=%s key=%s", TOKEN, SIM_KEY)
        try:
            raise RuntimeError(f"leak check: Authorization: Bot {TOKEN} / Bearer {SIM_KEY}")
        except RuntimeError:
            log.exception("leak check with a traceback")
    for text in (h.logs.text, "\n".join(real_log_setup.lines)):
        assert "leak check" in text and REDACTED in text
        assert TOKEN not in text and SIM_KEY not in text
        assert "job 1 accepted" in text  # the run really was logged
    # and redaction is the last line of defence, not the first: nothing but the planted lines even tried
    tried = [line for line in raw.lines if TOKEN in line or SIM_KEY in line]
    assert tried and all("leak check" in line for line in tried), tried
    for request in h.fake.requests:
        sent = json.dumps(request.json) + json.dumps(request.query) + json.dumps(request.headers)
        sent_files = b"".join(f.data for f in request.files)
        for secret in (TOKEN, SIM_KEY):
            assert secret not in sent, request.path
            assert secret.encode() not in sent_files, request.path


# --- mentions ---------------------------------------------------------------------------------------------------


async def test_mentions_in_prompts_and_lyrics_ping_nobody(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=SLOW) as h:
        await h.configure(cooldown=0)
        victim = h.fake.add_user("victim")
        role = h.fake.guild.add_role("Everyone-ish", int(MEMBER_PERMISSIONS))
        pings = f"@everyone @here <@&{role.id}> <@{victim.id}> <@!{victim.id}>"
        lyrics = f"[verse]\n{pings} come and sing\nOn the road again\n\n[chorus]\n{pings} oh oh"
        # 1: prompt and a lyrics file, delivered on the original response
        iid = await h.song({"prompt": f"{pings} a loud anthem", "lyrics_file": h.fake.upload("l.txt", lyrics.encode())})
        assert (await h.wait_final(iid)).attachments
        # 2: the token expires mid-job, so the song goes to the channel, mentioning the requester only
        iid = await h.song({"prompt": f"{pings} a quiet ballad"})
        await h.fake.wait_for_callback(iid)
        h.fake.expire_token(iid)
        await h.fake.wait_until(
            lambda: any(m.attachments for m in h.fake.channel_messages(h.fake.channel) if m.webhook_id is None),
            timeout=20,
            what="the song posted in the channel",
        )
        # 3: the modal, and a failure message that repeats nothing but still must not ping
        iid = await h.song({})
        await h.fake.wait_for_callback(iid)
        submit = h.fake.submit_modal(iid, {"Style / prompt": f"{pings} punk", "Lyrics": lyrics})
        await h.fake.send_interaction(submit)
        assert (await h.wait_final(int(submit["id"]))).attachments
        h.sim.scenario = Scenario(duration_s=2.0, pre_error="DataInspectionFailed")
        iid = await h.song({"prompt": f"{pings} a failing song"})
        assert (await h.wait_final(iid)).content.startswith("❌")
        # 4: a refusal that names roles and channels (role limit), and one for a non-moderator
        await h.configure(roles=(role.id,))
        assert f"<@&{role.id}>" in await _refusal(h, await h.song({"prompt": f"{pings} refused"}))
        assert NOT_A_MODERATOR in await _refusal(h, await h.command("songconfig show"))
    requester = str(h.fake.user.id)
    bodies = list(_message_bodies(h.fake.requests))
    assert len(bodies) >= 10
    for request, body in bodies:
        allowed = body.get("allowed_mentions")
        assert allowed is not None, (request.method, request.path, body.get("content"))
        assert allowed.get("parse") == [], (request.path, allowed)
        assert not allowed.get("roles"), (request.path, allowed)
        users = [str(user) for user in allowed.get("users") or []]
        if users:
            assert users == [requester], (request.path, allowed)
            assert re.fullmatch(r"/channels/\d+/messages", request.path), request.path
    messages = list(h.fake.state.messages.values())
    for message in messages:
        for version in [message, *message.history]:
            heard = version.pings()
            assert not heard.everyone and not heard.roles, version.content
            assert heard.users <= {h.fake.user.id}, version.content
    assert any(victim.mention in (m.content + json.dumps(m.embeds)) for m in messages)  # the text was repeated


# --- permissions ------------------------------------------------------------------------------------------------


async def test_every_moderator_command_refuses_members_without_manage_server(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        channel, role = h.fake.guild.add_channel("music"), h.fake.guild.add_role("DJ", int(Perm.MANAGE_GUILD))
        commands: list[tuple[str, dict[str, Any]]] = [
            ("songconfig show", {}),
            ("songconfig set", {"enabled": False}),
            ("songconfig set", {"cooldown": 0, "member_daily_songs": 1000, "max_concurrent": 20}),
            ("songconfig channels add", {"channel": channel}),
            ("songconfig channels remove", {"channel": h.fake.channel}),
            ("songconfig channels clear", {}),
            ("songconfig roles add", {"role": role}),
            ("songconfig roles remove", {"role": role}),
            ("songconfig roles clear", {}),
            ("songconfig reset", {}),
        ]
        # what a member may have: nothing; the everyday set; every "moderator-looking" bit but Manage Server;
        # and a role called DJ that has Manage Server on paper (Discord's computed permissions are what count)
        kinds: list[dict[str, Any]] = [
            {"permissions": 0},
            {"permissions": MEMBER_PERMISSIONS},
            {"permissions": MODERATOR_PERMISSIONS & ~Perm.MANAGE_GUILD | Perm.MANAGE_CHANNELS | Perm.MANAGE_ROLES},
            {"permissions": MEMBER_PERMISSIONS, "roles": [role]},
        ]
        for kind in kinds:
            for name, options in commands:
                iid = await h.command(name, options, **kind)
                text = await _refusal(h, iid)
                assert NOT_A_MODERATOR in text, (name, kind, text)
        # in DMs nobody has Manage Server of anything
        iid = await h.command("songconfig set", {"enabled": False}, dm=True, permissions=MODERATOR_PERMISSIONS)
        callback = await h.fake.wait_for_callback(iid)
        assert callback.type == 4 and callback.data.get("flags", 0) & EPHEMERAL
        assert await h.store.get_guild_settings(h.fake.guild.id) == DEFAULTS
        assert await h.store.audit_log(h.fake.guild.id) == []
        # a member sees only their own usage, not the server's
        usage = await _refusal(h, await h.command("songusage"))
        assert "This server" not in usage and "Top members" not in usage
        # and the check is not "refuse everyone": a moderator's change goes through and is audited
        iid = await h.command("songconfig set", {"cooldown": 5}, permissions=MODERATOR_PERMISSIONS)
        assert "60 seconds → 5 seconds" in await _refusal(h, iid)
        assert (await h.store.get_guild_settings(h.fake.guild.id)).cooldown == 5
        assert len(await h.store.audit_log(h.fake.guild.id)) == 1
        assert h.sim.requests == []


# --- input ------------------------------------------------------------------------------------------------------


def _has_invisible(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t" for ch in text)


async def test_hostile_lyrics_files_are_refused_in_words(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        up = h.fake.upload
        lied = up("small.txt", b"la la la\n" * 2500)  # 22 KB served, while the payload claims 100 bytes
        cases: list[tuple[str, Any, str]] = [
            ("oversized", up("big.txt", b"la la la\n" * 2000), "at most 16 KiB"),
            ("size lie", lied, "at most 16 KiB"),
            ("empty", up("empty.txt", b""), "empty"),
            ("only invisible", up("blank.txt", "\ufeff \u200b\u200d\n\t \x00".encode()), "binary"),
            ("only zero-width", up("blank2.txt", "\u200b\u200c\u200d\u2060\n \n".encode()), "empty"),
            ("binary", up("tune.txt", b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00" * 50), "binary"),
            ("NUL bytes in text", up("nul.txt", b"[verse]\nhello\x00world\n"), "binary"),
            ("UTF-16", up("utf16.txt", LYRICS.encode("utf-16")), "binary"),
            ("latin-1", up("latin1.txt", "Café au lait, déjà vu\n".encode("latin-1") * 5), "not UTF-8"),
            ("invalid UTF-8", up("bad.txt", b"[verse]\n\xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc\n" * 5), "not UTF-8"),
            ("not a text file", up("lyrics.mp3", LYRICS.encode()), ".txt or .lrc"),
            ("double extension", up("lyrics.txt.exe", LYRICS.encode()), ".txt or .lrc"),
        ]
        for label, upload, expected in cases:
            payload = h.fake.slash("song", {"lyrics_file": upload})
            if label == "size lie":
                payload["data"]["resolved"]["attachments"][str(upload.id)]["size"] = 100
            await h.fake.send_interaction(payload)
            text = await _refusal(h, int(payload["id"]))
            assert expected in text, (label, text)
            assert "Traceback" not in text and "Error" not in text, (label, text)
        assert h.sim.requests == []
        assert await _songs_used(h, h.fake.user.id) == 0
        assert await h.store.history(h.fake.user.id) == []
        assert h.bot.services.jobs.active_jobs == 0


async def test_lyrics_file_names_are_never_paths(tmp_path: Path) -> None:
    """The bot reads an attachment by its url and never uses its name as a path: a name Discord would never
    produce ("../../etc/passwd.txt") is just a name. The song is made from its text; nothing is written where the
    name points; the uploaded files are named from the prompt, never from the attachment."""
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        for name in ("../../etc/passwd.txt", "..\\..\\windows\\win.ini.lrc", "/abs/olute.txt"):
            upload = h.fake.upload("lyrics.txt", LYRICS.encode())  # served at a clean url, as Discord would
            payload = h.fake.slash("song", {"prompt": "folk", "lyrics_file": upload})
            payload["data"]["resolved"]["attachments"][str(upload.id)]["filename"] = name
            await h.fake.send_interaction(payload)
            final = await h.wait_final(int(payload["id"]))
            assert {a.filename for a in final.attachments} == {"folk.mp3", "lyrics.txt", "waveform.png"}
            assert h.sim.requests[-1]["body"]["input"]["lyrics"] == LYRICS
    written = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*")])
    assert not {"passwd.txt", "passwd", "win.ini.lrc", "olute.txt"} & set(written), written


async def test_long_and_invisible_text_options(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        long_prompt = ("folk " * 1200)[:6000]
        cases: list[tuple[dict[str, Any], str]] = [
            ({"prompt": long_prompt}, "at most 1,000 characters"),
            ({"prompt": "x" * 6000}, "at most 1,000 characters"),
            ({"prompt": "\u200b\u200c\u200d\u2060\ufeff"}, "style prompt or lyrics"),
            ({"prompt": "\x00\x01\x07\x1b\x7f\u202e"}, "style prompt or lyrics"),
            ({"prompt": PROMPT, "voice": "robot"}, "female or male"),
        ]
        for options, expected in cases:
            text = await _refusal(h, await h.song(options))
            assert expected in text, (options, text)
        # a modal submit is not bound by the form's max_length either: a forged one with 6000 characters each
        for values in (
            {"Style / prompt": "x" * 6000},
            {"Lyrics": "la " * 2000},
            {"Style / prompt": "y" * 6000, "Lyrics": "z" * 6000},
        ):
            iid = await h.song({})
            await h.fake.wait_for_callback(iid)
            submit = h.fake.submit_modal(iid, values)
            await h.fake.send_interaction(submit)
            text = await _refusal(h, int(submit["id"]))
            assert re.search(r"must be [\d,]+–[\d,]+ (characters|words); yours has [\d,]+", text), text
        assert h.sim.requests == []
        assert await _songs_used(h, h.fake.user.id) == 0
        # control and zero-width characters inside real text are cleaned away, everywhere the text goes
        dirty = "an up\u200bbeat\u200d summer\x00 folk\x07 song\u202e about\x1b[31m a road\ufeff trip"
        iid = await h.song({"prompt": dirty})
        final = await h.wait_final(iid)
        sent = h.sim.requests[-1]["body"]["input"]["prompt"]
        assert not _has_invisible(sent) and "summer folk song" in sent, repr(sent)
        shown = [final.content, json.dumps(final.embeds, ensure_ascii=False)]
        shown += [a.filename for a in final.attachments] + [
            a.data.decode() for a in final.attachments if a.filename == "lyrics.txt"
        ]
        for text in shown:
            assert not _has_invisible(text), repr(text)


async def test_forged_format_choice_costs_nothing(tmp_path: Path) -> None:
    """discord.py does not check an option against its choices: a forged `format` must be refused, not paid for."""
    async with running_bot(tmp_path) as h:
        text = await _refusal(h, await h.song({"prompt": PROMPT, "format": "exe"}))
        assert "mp3" in text
        assert h.sim.requests == []


# --- downloads (what tests/services/funmusic/test_client.py does not already cover) -----------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://dashscope-result-bj.oss-cn-beijing.aliyuncs.com@evil.example.com/{name}",
        "http://evil.example.com/x.oss-cn-beijing.aliyuncs.com/{name}",
        "http://evil.example.com#.oss-cn-beijing.aliyuncs.com",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "//evil.example.com/{name}",
    ],
    ids=["userinfo", "host-in-path", "host-in-fragment", "metadata-ip", "file-scheme", "scheme-relative"],
)
async def test_redirects_cannot_be_tricked_elsewhere(
    http_session: aiohttp.ClientSession, simulator: FunMusicSimulator, tmp_path: Path, target: str
) -> None:
    simulator.scenario = Scenario(download_redirect_to=target)
    client = make_client(http_session, simulator)
    with pytest.raises(DownloadError) as caught:
        await client.generate(GenerationRequest(lyrics=LYRICS), out_dir=tmp_path)
    assert "refusing" in str(caught.value)
    assert len(simulator.downloads) == 1  # the first hop only: the redirect was never followed


@pytest.mark.parametrize(
    "url",
    [
        "http://x.oss-cn-beijing.aliyuncs.com@evil.example.com/a.mp3",
        "http://evil.example.com\\@x.oss-cn-beijing.aliyuncs.com/a.mp3",
        "http://evil.example.com/?.aliyuncs.com",
        "http://aliyuncs.com.evil.example.com/a.mp3",
        "http://[::1]/a.mp3",
        "http://0x7f000001/a.mp3",
    ],
)
def test_lookalike_download_urls_are_refused(url: str) -> None:
    session = object.__new__(aiohttp.ClientSession)  # never used: only the url check runs
    client = FunMusicClient(session, api_key=Secret("k"), base_url="https://dashscope.aliyuncs.com/api/v1")
    with pytest.raises(DownloadError):
        client.check_download_url(url)


# --- abuse ------------------------------------------------------------------------------------------------------


async def _burst(h: Harness, count: int, **kwargs: Any) -> tuple[list[int], list[str]]:
    """`count` /song at once from one member: the ids accepted (deferred) and the refusals' texts."""
    ids = await asyncio.gather(*(h.song({"prompt": f"{PROMPT} {i}"}, **kwargs) for i in range(count)))
    outcomes = [await h.outcome(iid) for iid in ids]
    accepted = [iid for iid, (ok, _) in zip(ids, outcomes, strict=True) if ok]
    return accepted, [text for ok, text in outcomes if not ok]


async def test_spamming_song_gets_only_a_members_share(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=SLOW, SONGBOT_QUEUE_SIZE="3", MAX_CONCURRENT_GENERATIONS="1") as h:
        await h.configure(cooldown=0, member_daily_songs=100)
        accepted, refused = await _burst(h, 20)
        assert len(accepted) == MAX_JOBS_PER_MEMBER, refused
        assert all(f"already have {MAX_JOBS_PER_MEMBER} songs in progress" in text for text in refused), refused
        # the queue (one slot running, three waiting) still has room for everyone else
        others = [h.fake.add_user(f"patient{i}") for i in range(2)]
        later = [await h.song({"prompt": PROMPT}, user=member) for member in others]
        assert [(await h.fake.wait_for_callback(iid)).type for iid in later] == [5, 5]
        h.sim.scenario = Scenario(duration_s=2.0)  # the songs still waiting need not be slow any more
        for iid in [*accepted, *later]:
            assert (await h.wait_final(iid, timeout=30)).attachments
        assert len(h.sim.requests) == MAX_JOBS_PER_MEMBER + 2


async def test_spamming_song_cannot_beat_the_daily_quota(tmp_path: Path) -> None:
    async with running_bot(tmp_path, SONGBOT_QUEUE_SIZE="20", MAX_CONCURRENT_GENERATIONS="4") as h:
        await h.configure(cooldown=0, member_daily_songs=3)
        made = 0
        for _ in range(3):
            accepted, refused = await _burst(h, 20)
            assert len(accepted) == min(MAX_JOBS_PER_MEMBER, 3 - made), (made, refused)
            made += len(accepted)
            for iid in accepted:
                assert (await h.wait_final(iid, timeout=30)).attachments
        assert made == 3
        assert all("daily limit of 3 songs" in text for text in refused), refused
        assert len(h.sim.requests) == 3
        assert await _songs_used(h, h.fake.user.id) == 3


async def test_spamming_song_during_a_cooldown_gets_one_song(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        ids = await asyncio.gather(*(h.song({"prompt": PROMPT}) for _ in range(20)))
        outcomes = [await h.outcome(iid) for iid in ids]
        assert [ok for ok, _ in outcomes].count(True) == 1
        refusals = [text for ok, text in outcomes if not ok]
        assert all("cooldown" in text for text in refusals), refusals
        await h.wait_final(next(iid for iid, (ok, _) in zip(ids, outcomes, strict=True) if ok))
        assert len(h.sim.requests) == 1


async def test_a_burst_cannot_overfill_the_queue(tmp_path: Path) -> None:
    """Twenty members at once against one running slot and a queue of two: at most three are accepted, the rest
    are told the queue is full, and every accepted song is delivered."""
    async with running_bot(tmp_path, scenario=SLOW, SONGBOT_QUEUE_SIZE="2", MAX_CONCURRENT_GENERATIONS="1") as h:
        members = [h.fake.add_user(f"member{i}") for i in range(20)]
        ids = await asyncio.gather(*(h.song({"prompt": PROMPT}, user=m) for m in members))
        outcomes = [await h.outcome(iid) for iid in ids]
        accepted = [iid for iid, (ok, _) in zip(ids, outcomes, strict=True) if ok]
        assert len(accepted) == 3, len(accepted)  # one generating, two waiting
        assert all("queue is full" in text for ok, text in outcomes if not ok), outcomes
        h.sim.scenario = Scenario(duration_s=2.0)
        for iid in accepted:
            assert (await h.wait_final(iid, timeout=30)).attachments


async def test_others_cannot_cancel_however_often_they_press(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=SLOW) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await _job_id(h, iid)
        stranger = h.fake.add_user("stranger")
        message = h.fake.original(iid)
        clicks = [h.fake.click(f"song:cancel:{job_id}", message, user=stranger) for _ in range(10)]
        await asyncio.gather(*(h.fake.send_interaction(click) for click in clicks))
        for click in clicks:
            assert "Only the member who asked" in await _refusal(h, int(click["id"]))
        final = await h.wait_final(iid)
        assert final.attachments
        assert (await h.wait_job_status(job_id, "delivered")).status == "delivered"
        assert len(h.sim.requests) == 1


async def test_the_requester_pressing_cancel_many_times_cancels_once(tmp_path: Path) -> None:
    async with running_bot(tmp_path, scenario=SLOW) as h:
        iid = await h.song({"prompt": PROMPT})
        job_id = await _job_id(h, iid)
        message = h.fake.original(iid)
        clicks = [h.fake.click(f"song:cancel:{job_id}", message) for _ in range(10)]
        await asyncio.gather(*(h.fake.send_interaction(click) for click in clicks))
        answers = [await h.fake.wait_for_callback(int(click["id"])) for click in clicks]
        assert all(a.type in (4, 6) for a in answers), [a.type for a in answers]
        final = await h.wait_final(iid)
        assert final.content.startswith("🛑")
        assert (await h.wait_job_status(job_id, "cancelled")).status == "cancelled"
        assert await _songs_used(h, h.fake.user.id) == 0


async def test_spamming_regenerate_counts_against_the_quota(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0, member_daily_songs=2)
        iid = await h.song({"prompt": PROMPT})
        first = await h.wait_final(iid)
        job_id = await h.wait_job_status(1, "delivered")
        clicks = [h.fake.click(f"song:regen:{job_id.id}", first) for _ in range(8)]
        await asyncio.gather(*(h.fake.send_interaction(click) for click in clicks))
        outcomes = [await h.outcome(int(click["id"])) for click in clicks]
        accepted = [click for click, (ok, _) in zip(clicks, outcomes, strict=True) if ok]
        assert len(accepted) == 1, outcomes
        assert all("daily limit of 2 songs" in text for ok, text in outcomes if not ok), outcomes
        assert (await h.wait_final(int(accepted[0]["id"]))).attachments
        assert len(h.sim.requests) == 2
        assert await _songs_used(h, h.fake.user.id) == 2


# --- event loop guards (tests/support/watchdog.py) --------------------------------------------------------------


def _block_the_loop() -> None:
    time.sleep(0.001)  # blockbuster raises here


def _warn() -> None:
    warnings.warn("an old API", DeprecationWarning, stacklevel=1)  # filterwarnings=error raises here


def _spin() -> None:
    """CPU work on the loop: no blocking call for blockbuster to see."""
    end = time.perf_counter() + 0.25
    while time.perf_counter() < end:
        pass


def _observer_stage_doing(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    # the class the running bot uses: unloading an extension (a bot closing) drops its package's modules
    observer: type[DiscordJobObserver] = importlib.import_module("cogs.song._delivery").DiscordJobObserver
    original = observer.stage

    async def stage(self: DiscordJobObserver, stage: JobStatus, progress: Any) -> None:
        action()
        await original(self, stage, progress)

    monkeypatch.setattr(observer, "stage", stage)


async def test_guards_catch_what_the_bot_swallows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocking call or a warning inside one of the bot's tasks becomes "something went wrong" for the member and
    a log line: with blockbuster alone, a test that waits for an answer passes. tests/support/watchdog.py records
    both."""
    this_test = test_guards_catch_what_the_bot_swallows.__code__
    async with running_bot(tmp_path) as h:
        await h.configure(cooldown=0)
        for action, expected in ((_block_the_loop, "blocking call to time.sleep"), (_warn, "DeprecationWarning")):
            _observer_stage_doing(monkeypatch, action)
            with guarding(Findings(), this_test) as findings:
                final = await h.wait_final(await h.song({"prompt": PROMPT}))
            assert final.content.startswith("❌")  # swallowed: the member got an error and the test went on
            assert any(expected in item for item in findings.items), findings.items
            assert any("in stage" in item for item in findings.items), findings.items  # where it happened
        # and an expected BlockingError in the test's own stack (pytest.raises) is not a finding
        with guarding(Findings(), this_test) as findings, pytest.raises(BlockingError):
            _block_the_loop()
        assert findings.items == []


async def test_the_loop_watchdog_names_cpu_work_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _observer_stage_doing(monkeypatch, _spin)
    findings = Findings()
    async with running_bot(tmp_path) as h:
        async with watching_loop(findings, threshold_s=0.1):
            final = await h.wait_final(await h.song({"prompt": PROMPT}))
    assert final.attachments  # blockbuster saw nothing: the song went out
    assert findings.items and all("_spin" in item for item in findings.items), findings.items


# --- lyrics files that arrive slowly or are built to be slow ------------------------------------------------------


@contextlib.asynccontextmanager
async def _trickling_file_server(data: bytes, pieces: int, *, chunked: bool) -> AsyncIterator[str]:
    """A real HTTP server that sends ``data`` in ``pieces`` writes with a pause after each (several TCP
    segments, as a busy CDN would), with a Content-Length or chunked; yields the file's url."""

    async def serve(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(data)
        await resp.prepare(request)
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            await resp.write(data[start : start + size])
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/lyrics.txt", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(addr[1] for addr in runner.addresses if isinstance(addr, tuple))
    try:
        yield f"http://127.0.0.1:{port}/lyrics.txt"
    finally:
        await runner.cleanup()


def _lyrics_file_at(h: Harness, url: str, data: bytes, filename: str = "lyrics.txt") -> dict[str, Any]:
    upload = h.fake.upload(filename, data)
    payload = h.fake.slash("song", {"lyrics_file": upload})
    payload["data"]["resolved"]["attachments"][str(upload.id)]["url"] = url
    return payload


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_lyrics_file_sent_in_several_writes_is_read_whole(tmp_path: Path, chunked: bool) -> None:
    verse = "[verse]\nThe lamp is lit above the bay\nThe keeper counts the ships away\n\n"
    lyrics = (verse * 30)[:1900].rstrip()  # about 1,900 characters: the non-streaming mode takes them all
    data = lyrics.encode()
    async with running_bot(tmp_path) as h, _trickling_file_server(data, 4, chunked=chunked) as url:
        payload = _lyrics_file_at(h, url, data)
        await h.fake.send_interaction(payload)
        final = await h.wait_final(int(payload["id"]))
        assert final.attachments, final.content
        assert h.sim.requests[-1]["body"]["input"]["lyrics"] == lyrics


async def test_a_lyrics_file_over_the_cap_sent_in_several_writes_is_refused(tmp_path: Path) -> None:
    data = b"la la la la\n" * 1500  # 18,000 bytes, while the payload claims 100
    async with running_bot(tmp_path) as h, _trickling_file_server(data, 5, chunked=True) as url:
        payload = _lyrics_file_at(h, url, data)
        payload["data"]["resolved"]["attachments"][next(iter(payload["data"]["resolved"]["attachments"]))]["size"] = 100
        await h.fake.send_interaction(payload)
        assert "at most 16 KiB" in await _refusal(h, int(payload["id"]))
        assert h.sim.requests == []


WORST_LRC = pytest.mark.parametrize(
    "text",
    [
        "\n" * 16383 + "[",
        "[" + "\n" * 16383,
        "[ar:" + "\n" * 16380,
        "\n" * 16380 + "[ar:",
        " \n" * 8191 + "[",
        "[00:00]" * 2340,
    ],
    ids=["newlines-then-bracket", "bracket-then-newlines", "open-tag", "newlines-then-tag", "blank-lines", "stamps"],
)


@WORST_LRC
async def test_worst_case_lrc_stripping_is_linear(text: str) -> None:
    """Run on the loop on purpose, as the cog does: the loop watchdog fails the test if it is held."""
    try:
        lyrics = decode_lyrics_file(text.encode(), "worst.lrc")
    except InvalidInput as exc:
        assert "empty" in str(exc)
    else:
        assert lyrics in ("[", "[ar:")


@WORST_LRC
async def test_worst_case_lrc_files_do_not_stall_the_loop(tmp_path: Path, text: str) -> None:
    """The loop watchdog (tests/watchdog.py) fails this test if stripping the .lrc holds the loop."""
    async with running_bot(tmp_path) as h:
        upload = h.fake.upload("worst.lrc", text.encode())
        payload = h.fake.slash("song", {"prompt": PROMPT, "lyrics_file": upload})
        await h.fake.send_interaction(payload)
        await h.fake.wait_for_callback(int(payload["id"]))
