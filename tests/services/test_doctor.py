"""`songbot doctor`: one line per check against the offline Discord and the simulator, a non-zero exit when any
check fails, and each failure in words that say what to do."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from bot import run_doctor
from services.offline.discord import FakeDiscord
from services.offline.payloads import BOT_PERMISSIONS, Perm
from services.settings import load_settings
from tests.support.e2e import TOKEN, e2e_env, running_bot
from tests.support.processes import broken_ffmpeg_path, run_bot_command
from tests.support.sim_fixtures import running_simulator


def lines_of(text: str) -> dict[str, tuple[str, str]]:
    """{check name: (verdict, detail)} from the checklist's lines."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        verdict, _, rest = line.strip().partition("  ")
        name, _, detail = rest.partition(": ")
        if verdict in ("ok", "FAIL", "skip"):
            found[name] = (verdict, detail)
    return found


async def test_a_healthy_setup_passes_every_check(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:  # the bot ran once: commands synced, database created and migrated
        await h.store.add_channel(h.fake.guild.id, h.fake.guild.owner_id, h.fake.channel.id)
        out = io.StringIO()
        code = await run_doctor(h.settings, out)
    report = lines_of(out.getvalue())
    assert code == 0, out.getvalue()
    assert set(report) >= {"Discord token", "slash commands", "DashScope", "ffmpeg", "database", "work folder"}
    assert all(verdict == "ok" for verdict, _ in report.values()), out.getvalue()
    assert str(h.fake.application_id) in report["Discord token"][1]
    assert report[f"#{h.fake.channel.name} in {h.fake.guild.name}"] == ("ok", "the bot may post songs here")
    assert out.getvalue().rstrip().endswith("all checks passed")
    assert TOKEN not in out.getvalue()


async def test_each_failure_is_named_with_what_to_do(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        await h.store.add_channel(h.fake.guild.id, h.fake.guild.owner_id, h.fake.channel.id)
        await h.fake.set_bot_permissions(h.fake.channel, BOT_PERMISSIONS & ~Perm.ATTACH_FILES)
        fresh = h.fake.add_guild("Other")  # nothing to check there: no channels chosen
        assert fresh.id != h.fake.guild.id
        out = io.StringIO()
        code = await run_doctor(h.settings, out)
        report = lines_of(out.getvalue())
        assert code == 1
        assert report[f"#{h.fake.channel.name} in {h.fake.guild.name}"][0] == "FAIL"
        assert "Attach Files" in report[f"#{h.fake.channel.name} in {h.fake.guild.name}"][1]

        env = e2e_env(h.sim, h.fake, tmp_path, DASHSCOPE_API_KEY="sk-not-the-simulators-key")
        out = io.StringIO()
        assert await run_doctor(load_settings(env), out) == 1
        assert lines_of(out.getvalue())["DashScope"][0] == "FAIL"
        assert "refused the key" in lines_of(out.getvalue())["DashScope"][1]
        assert "sk-not-the-simulators-key" not in out.getvalue()

    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:  # a Discord the bot never synced to
        missing_db = f"sqlite+aiosqlite:///{tmp_path / 'nowhere' / 'songbot.db'}"
        blocked = tmp_path / "a-file"
        await asyncio.to_thread(blocked.write_text, "not a folder")
        env = e2e_env(
            sim,
            fake,
            tmp_path,
            DATABASE_URL=missing_db,
            SONGBOT_DATA_DIR=str(blocked / "data"),
            DASHSCOPE_BASE_URL="http://127.0.0.1:9/api/v1",
        )
        out = io.StringIO()
        assert await run_doctor(load_settings(env), out) == 1
        report = lines_of(out.getvalue())
        assert report["Discord token"][0] == "ok"
        assert report["slash commands"][0] == "FAIL" and "python bot.py sync" in report["slash commands"][1]
        assert report["DashScope"][0] == "FAIL" and "does not answer" in report["DashScope"][1]
        assert report["database"][0] == "FAIL" and "no database" in report["database"][1]
        assert report["work folder"][0] == "FAIL" and "not writable" in report["work folder"][1]
        assert report["song channels"][0] == "skip"

        env = e2e_env(sim, fake, tmp_path, DISCORD_TOKEN=TOKEN + "x")
        out = io.StringIO()
        assert await run_doctor(load_settings(env), out) == 1
        report = lines_of(out.getvalue())
        assert report["Discord token"] == (
            "FAIL",
            "Discord refused DISCORD_TOKEN: copy the bot token again from the Developer Portal",
        )
        assert report["slash commands"][0] == "FAIL" and "not checked" in report["slash commands"][1]


async def test_songbot_doctor_exits_non_zero_and_names_a_broken_ffmpeg(tmp_path: Path) -> None:
    """A real process, as an operator runs it: `python bot.py doctor` with a broken ffmpeg first on PATH."""
    path = await broken_ffmpeg_path(tmp_path / "bin", "error while loading shared libraries: libavcodec.so.61")
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        code, text, stderr = await run_bot_command("doctor", env=e2e_env(sim, fake, tmp_path, PATH=path))
    assert code == 1, (text, stderr)
    report = lines_of(text)
    assert report["ffmpeg"][0] == "FAIL" and "libavcodec" in report["ffmpeg"][1]
    assert report["Discord token"][0] == "ok"
    assert "Traceback" not in text + stderr
