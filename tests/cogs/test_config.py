"""Moderator controls, quotas and persistence end to end: /songconfig, /songusage, /songhistory, /songdata, the
enforcement chain as members see it, and restart recovery — the real bot against the offline Discord."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cogs._words import setting_allowed
from services.guild_settings import MAX_IDS, SPECS
from services.offline.payloads import MODERATOR_PERMISSIONS
from services.offline.simulator import Scenario
from services.policy import RequestContext
from tests.support.e2e import Harness, running_bot

EPHEMERAL = 64
PROMPT = "a calm piano ballad about the sea"


async def _answer(h: Harness, iid: int) -> str:
    """An immediate ephemeral answer: its text, embed text included."""
    callback = await h.fake.wait_for_callback(iid)
    assert callback.type == 4 and callback.data["flags"] & EPHEMERAL, callback
    parts = [callback.data.get("content") or ""]
    for embed in callback.data.get("embeds", []):
        parts.append(embed.get("title", ""))
        parts.append(embed.get("description", "") or "")
        parts.extend(f"{f['name']}: {f['value']}" for f in embed.get("fields", []))
        parts.append((embed.get("footer") or {}).get("text", ""))
    return "\n".join(parts)


async def _mod(h: Harness, name: str, options: dict[str, object] | None = None) -> str:
    iid = await h.command(name, options or {}, permissions=MODERATOR_PERMISSIONS)
    return await _answer(h, iid)


async def test_show_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        text = await _mod(h, "songconfig show")
        for name in (
            "enabled",
            "cooldown",
            "member_daily_songs",
            "server_daily_songs",
            "server_daily_minutes",
            "max_concurrent",
            "default_voice",
            "default_format",
            "watermark",
            "private_allowed",
            "channels",
            "roles",
        ):
            assert f"{name}:" in text, name
        assert "exempt from role limits" in text


async def test_set_answers_before_and_after_and_audits(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        text = await _mod(h, "songconfig set", {"cooldown": 30, "default_voice": "male"})
        assert "cooldown**: 60 seconds → 30 seconds" in text and "default_voice**: female → male" in text
        settings = await h.store.get_guild_settings(h.fake.guild.id)
        assert settings.cooldown == 30 and settings.default_voice == "male"
        audit = await h.store.audit_log(h.fake.guild.id)
        assert {(a.key, a.before, a.after) for a in audit} >= {
            ("cooldown", 60, 30),
            ("default_voice", "female", "male"),
        }
        refused = await _mod(h, "songconfig set", {"cooldown": 90000})
        assert "0" in refused and "86400" in refused
        assert (await h.store.get_guild_settings(h.fake.guild.id)).cooldown == 30
        reset = await _mod(h, "songconfig reset")
        assert "30 seconds → 60 seconds" in reset


async def test_members_without_manage_server_are_refused(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.command("songconfig set", {"cooldown": 0})
        assert "Manage Server" in await _answer(h, iid)
        assert (await h.store.get_guild_settings(h.fake.guild.id)).cooldown == 60
        assert await h.store.audit_log(h.fake.guild.id) == []


async def test_disabled_then_channel_then_role_limits(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await _mod(h, "songconfig set", {"enabled": False})
        assert "turned off" in await _answer(h, await h.song({"prompt": PROMPT}))
        await _mod(h, "songconfig set", {"enabled": True})
        other = h.fake.guild.add_channel("music")
        await _mod(h, "songconfig channels add", {"channel": other})
        text = await _answer(h, await h.song({"prompt": PROMPT}))
        assert f"<#{other.id}>" in text
        await _mod(h, "songconfig channels clear")
        role = h.fake.guild.add_role("Composers", 0)
        await _mod(h, "songconfig roles add", {"role": role})
        assert f"<@&{role.id}>" in await _answer(h, await h.song({"prompt": PROMPT}))
        assert h.sim.requests == []
        # a member with the role, and a moderator without it, may
        iid = await h.song({"prompt": PROMPT}, roles=[role])
        assert (await h.fake.wait_for_callback(iid)).type == 5
        await h.wait_final(iid)


async def test_cooldown_and_daily_quota_messages(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT})
        await h.wait_final(iid)
        text = await _answer(h, await h.song({"prompt": PROMPT}))
        assert "cooldown" in text and "<t:" in text
        await _mod(h, "songconfig set", {"cooldown": 0, "member_daily_songs": 1})
        text = await _answer(h, await h.song({"prompt": PROMPT}))
        assert "daily limit of 1 song in this server" in text and "<t:" in text
        assert len(h.sim.requests) == 1


async def test_global_budget_is_enforced(tmp_path: Path) -> None:
    async with running_bot(tmp_path, SONGBOT_GLOBAL_DAILY_SECONDS="5", SONGBOT_ESTIMATED_SONG_SECONDS="10") as h:
        text = await _answer(h, await h.song({"prompt": PROMPT}))
        assert "left for today across all servers" in text
        assert h.sim.requests == []


async def test_queue_full_and_positions(tmp_path: Path) -> None:
    slow = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.15)
    async with running_bot(tmp_path, scenario=slow, MAX_CONCURRENT_GENERATIONS="1", SONGBOT_QUEUE_SIZE="1") as h:
        await h.configure(cooldown=0)
        members = [h.fake.add_user(f"m{i}") for i in range(3)]
        first = await h.song({"prompt": PROMPT}, user=members[0])
        await h.fake.wait_for_callback(first)
        second = await h.song({"prompt": PROMPT}, user=members[1])
        await h.fake.wait_for_callback(second)
        await h.fake.wait_until(
            lambda: any("Queued — position 1" in (e.content or "") for e in h.fake.edits(second)),
            what="the queued message",
        )
        third = await h.song({"prompt": PROMPT}, user=members[2])
        assert "queue is full" in await _answer(h, third)
        assert (await h.wait_final(first)).attachments
        assert (await h.wait_final(second)).attachments


async def test_usage_history_and_data_deletion(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        iid = await h.song({"prompt": PROMPT})
        final = await h.wait_final(iid)
        await h.wait_job_status(1, "delivered")  # the final edit lands just before the job row says so
        mine = await _answer(h, await h.command("songusage"))
        assert "1 of 5 songs" in mine and "4 songs left" in mine and "This server" not in mine
        server = await _answer(h, await h.command("songusage", permissions=MODERATOR_PERMISSIONS))
        assert "This server" in server and "1 of 50 songs" in server and f"<@{h.fake.user.id}>" in server
        history = await _answer(h, await h.command("songhistory"))
        assert f"/{final.channel_id}/{final.id}" in history and "download" in history
        deleted = await _answer(h, await h.command("songdata delete"))
        assert "Erased" in deleted
        assert "no songs yet" in await _answer(h, await h.command("songhistory"))
        usage = await h.bot.services.policy.member_usage(h.fake.guild.id, h.fake.user.id)
        assert usage.songs_used == 1  # quotas still hold


async def test_restart_marks_interrupted_jobs_refunds_and_tells_the_channel(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        fake = h.fake
        ctx = RequestContext(
            guild_id=fake.guild.id,
            channel_id=fake.channel.id,
            user_id=fake.user.id,
            role_ids=[],
            is_manager=False,
            estimated_seconds=10,
        )
        policy = h.bot.services.policy
        admission = await policy.admit(
            ctx, prompt=PROMPT, lyrics=None, options={}, place=h.bot.services.jobs.place(fake.user.id)
        )
        await h.store.transition(admission.job_id, "generating")
        assert (await policy.member_usage(fake.guild.id, fake.user.id)).songs_used == 1
        await h.bot.close()
        async with running_bot(tmp_path, fake=fake) as h2:
            job = await h2.store.get_job(admission.job_id)
            assert job.status == "interrupted"
            told = [m for m in fake.channel_messages(fake.channel) if "restarted" in m.content]
            assert told and told[0].content.startswith(f"<@{fake.user.id}>")
            usage = await h2.bot.services.policy.member_usage(fake.guild.id, fake.user.id)
            assert usage.songs_used == 0


# --- every reply fits Discord's limits (the offline Discord answers 400/50035 past them, as Discord does) -------

#: A prompt of markdown characters: escaping doubles it.
MARKDOWN_PROMPT = "*_~`|>" * 30
#: A signed download url as DashScope hands them out: hundreds of characters.
SIGNED_URL = "https://dashscope-result.oss-cn-beijing.aliyuncs.com/1d/ab/song.mp3?" + "&".join(
    f"x-oss-{name}={'A1b2C3d4' * 12}" for name in ("credential", "signature", "security-token", "date", "expires")
)


async def test_songhistory_with_markdown_titles_and_signed_urls_fits(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        fake = h.fake
        expires = h.bot.services.clock.now() + timedelta(hours=20)
        for number in range(10):
            async with h.store.write() as tx:
                job_id = await tx.insert_job(
                    guild_id=fake.guild.id,
                    channel_id=fake.channel.id,
                    user_id=fake.user.id,
                    prompt=MARKDOWN_PROMPT,
                    lyrics=None,
                    options={"title": MARKDOWN_PROMPT},
                )
            await h.store.transition(
                job_id, "delivered", url=f"{SIGNED_URL}&n={number}", url_expires_at=expires, message_id=10**18 + number
            )
        iid = await h.command("songhistory")
        callback = await fake.wait_for_callback(iid)
        assert callback.type == 4, callback
        (embed,) = callback.data["embeds"]
        assert embed["title"] == "Your recent songs"
        lines = embed["description"].split("\n")
        assert len(lines) == 10 and f"{SIGNED_URL}&n=9" in lines[0]  # every song; the newest keeps its link
        assert all("\\*\\_" in line for line in lines)  # escaped: shown as typed


async def test_channel_and_role_lists_at_their_maximum_answer_in_full(tmp_path: Path) -> None:
    channels = [10**17 + i for i in range(MAX_IDS - 1)]
    roles = [2 * 10**17 + i for i in range(MAX_IDS)]
    async with running_bot(tmp_path) as h:
        await h.configure(channels=channels, roles=roles)
        music = h.fake.guild.add_channel("music")
        added = await _mod(h, "songconfig channels add", {"channel": music})
        assert added == f"**channels**: 99 channels → 100 channels (added <#{music.id}>)"
        shown = await _mod(h, "songconfig show")
        assert "100 channels: <#" in shown and "and 95 more" in shown and "100 roles: <@&" in shown
        removed = await _mod(h, "songconfig channels remove", {"channel": music})
        assert removed == f"**channels**: 100 channels → 99 channels (removed <#{music.id}>)"
        reset = await _mod(h, "songconfig reset")
        assert "**channels**: 99 channels → all" in reset and "**roles**: 100 roles → all" in reset
        await h.configure(roles=roles)
        cleared = await _mod(h, "songconfig roles clear")
        assert cleared.startswith("**roles**: 100 roles → all (removed <@&")
        settings = await h.store.get_guild_settings(h.fake.guild.id)
        assert settings.channels == () and settings.roles == ()


async def test_set_options_carry_the_settings_bounds(tmp_path: Path) -> None:
    """Discord shows and enforces the ranges: the synced command carries guild_settings' own bounds."""
    async with running_bot(tmp_path) as h:
        config = next(c for c in h.fake.commands() if c["name"] == "songconfig")
        set_ = next(o for o in config["options"] if o["name"] == "set")
        options = {o["name"]: o for o in set_["options"]}
        for name in ("cooldown", "member_daily_songs", "server_daily_songs", "server_daily_minutes", "max_concurrent"):
            option = options[name]
            assert option["type"] == 4  # integer
            assert (option["min_value"], option["max_value"]) == (SPECS[name].low, SPECS[name].high), option
            assert setting_allowed(SPECS[name]) in option["description"]


async def test_a_crafted_long_value_is_refused_in_one_short_sentence(tmp_path: Path) -> None:
    """discord.py does not hold a submitted value to the option's choices: the refusal quotes it cut short."""
    async with running_bot(tmp_path) as h:
        refused = await _mod(h, "songconfig set", {"default_voice": "*" * 5000})
        assert refused.startswith("default_voice must be one of female, male; got '****") and len(refused) < 200
        assert (await h.store.get_guild_settings(h.fake.guild.id)).default_voice == "female"


async def test_queue_positions_count_songs_ahead_in_words(tmp_path: Path) -> None:
    slow = Scenario(duration_s=2.0, chunk_bytes=2048, chunk_delay_s=0.15)
    async with running_bot(tmp_path, scenario=slow, MAX_CONCURRENT_GENERATIONS="1", SONGBOT_QUEUE_SIZE="2") as h:
        await h.configure(cooldown=0)
        members = [h.fake.add_user(f"m{i}") for i in range(3)]
        ids = []
        for member in members:
            ids.append(await h.song({"prompt": PROMPT}, user=member))
            await h.fake.wait_for_callback(ids[-1])
        await h.fake.wait_until(
            lambda: any(
                "Queued — position 2 (1 song ahead of yours)." in (e.content or "") for e in h.fake.edits(ids[2])
            ),
            what="the second place in the queue",
        )
