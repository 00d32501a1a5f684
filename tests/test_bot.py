"""The entry point: command syncing only when the set changed, the dev guild, invite, and one-line start errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot import REQUIRED_PERMISSIONS, commands_match, print_invite
from services.offline.discord import FakeDiscord, point_discord_py_at
from services.settings import load_settings
from tests.support.e2e import TOKEN, e2e_env, running_bot
from tests.support.processes import ROOT, child_env
from tests.support.sim_fixtures import running_simulator


async def test_commands_sync_only_when_they_changed(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        async with running_bot(tmp_path, fake=fake):
            pass
        assert len(fake.command_syncs) == 1
        names = {c["name"] for c in fake.commands()}
        assert {"song", "songconfig", "songusage", "songhistory", "songdata"} <= names
        async with running_bot(tmp_path, fake=fake):
            pass
        assert len(fake.command_syncs) == 1  # unchanged: no second sync


async def test_a_new_application_on_the_same_data_dir_gets_its_commands(tmp_path: Path) -> None:
    """Tried with a test application, then the production token in .env: the new application has no commands."""
    async with FakeDiscord(token=TOKEN) as first:
        async with running_bot(tmp_path, fake=first):
            pass
        assert len(first.command_syncs) == 1
    async with FakeDiscord(token=TOKEN) as second:
        assert second.application_id != first.application_id
        async with running_bot(tmp_path, fake=second) as h:
            assert "not syncing" not in h.logs.text
        assert len(second.command_syncs) == 1
        assert {"song", "songconfig", "songusage", "songhistory", "songdata"} <= {c["name"] for c in second.commands()}


async def test_commands_deleted_or_changed_in_discord_are_synced_again(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        async with running_bot(tmp_path, fake=fake):
            pass
        fake.state.commands[None] = []  # deleted in the Developer Portal
        async with running_bot(tmp_path, fake=fake):
            pass
        assert len(fake.command_syncs) == 2 and any(c["name"] == "song" for c in fake.commands())
        song = next(c for c in fake.commands() if c["name"] == "song")
        song["options"] = song["options"][:-1]  # an older version of the command (no `private` option)
        async with running_bot(tmp_path, fake=fake):
            pass
        assert len(fake.command_syncs) == 3
        assert [o["name"] for o in next(c for c in fake.commands() if c["name"] == "song")["options"]][-1] == "private"


async def test_sync_command_pushes_even_when_nothing_changed(tmp_path: Path) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        async with running_bot(tmp_path, fake=fake):
            pass
        assert len(fake.command_syncs) == 1
        identified = fake.gateway.identify_count
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "bot.py",
            "sync",
            cwd=ROOT,
            env=child_env(e2e_env(sim, fake, tmp_path, LOG_LEVEL="INFO")),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        assert len(fake.command_syncs) == 2 and "synced" in out.decode()
        assert fake.gateway.identify_count == identified  # sync logs in over REST and never connects


def test_discord_leaving_out_empty_fields_is_no_difference() -> None:
    wanted = [
        {
            "name": "song",
            "type": 1,
            "description": "d",
            "options": [{"type": 5, "name": "private", "description": "p", "required": False}],
            "nsfw": False,
            "default_member_permissions": 32,
            "contexts": None,
            "integration_types": None,
        }
    ]
    present = [
        {
            "id": "1",
            "version": "2",
            "name": "song",
            "type": 1,
            "description": "d",
            "options": [{"type": 5, "name": "private", "description": "p"}],
            "default_member_permissions": "32",
            "integration_types": [0],
        }
    ]
    assert commands_match(wanted, present)
    assert not commands_match(wanted, [*present, {"name": "old", "type": 1, "description": "gone"}])
    assert not commands_match(wanted, [{**present[0], "default_member_permissions": None}])
    assert not commands_match(wanted, [{**present[0], "description": "other"}])


async def test_dev_guild_gets_the_global_commands_at_once(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN) as fake:
        async with running_bot(tmp_path, fake=fake, DEV_GUILD_ID=str(fake.guild.id)):
            pass
        guild_names = {c["name"] for c in fake.commands(fake.guild)}
        assert {"song", "songconfig"} <= guild_names
        song = next(c for c in fake.commands(fake.guild) if c["name"] == "song")
        assert [o["name"] for o in song["options"]] == [
            "prompt",
            "voice",
            "format",
            "instrumental",
            "watermark",
            "lyrics_file",
            "private",
        ]
        config = next(c for c in fake.commands(fake.guild) if c["name"] == "songconfig")
        assert int(config["default_member_permissions"]) == 32  # Manage Server
        async with running_bot(tmp_path, fake=fake, DEV_GUILD_ID=str(fake.guild.id)):
            pass
        assert len(fake.command_syncs) == 1  # the guild's commands are compared, and they are unchanged


async def test_invite_url_has_the_documented_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
        with point_discord_py_at(fake):
            await print_invite(load_settings(e2e_env(sim, fake, tmp_path)))
    url = capsys.readouterr().out.strip()
    assert f"client_id={fake.application_id}" in url
    assert f"permissions={REQUIRED_PERMISSIONS.value}" in url and "applications.commands" in url
    readme = await asyncio.to_thread((ROOT / "README.md").read_text)
    assert str(REQUIRED_PERMISSIONS.value) in readme


def _run_bot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD", "DASHSCOPE", "SONGBOT"))}
    return subprocess.run(
        [sys.executable, "bot.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_token_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = _run_bot(env={"DISCORD_TOKEN": "", "SONGBOT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: DISCORD_TOKEN is not set")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_unknown_subcommand(tmp_path: Path) -> None:
    result = _run_bot("dance", env={"SONGBOT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "unknown command 'dance'" in result.stderr


def test_help_and_version(tmp_path: Path) -> None:
    for flag in ("--help", "-h"):
        result = _run_bot(flag, env={"SONGBOT_DATA_DIR": str(tmp_path)})
        assert result.returncode == 0 and result.stdout.startswith("usage: songbot"), result.stderr
        assert all(word in result.stdout for word in ("generate", "sync", "invite"))
    result = _run_bot("--version", env={"SONGBOT_DATA_DIR": str(tmp_path)})
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert result.returncode == 0 and result.stdout.strip() == f"songbot {pyproject['project']['version']}"
    assert pyproject["project"]["scripts"]["songbot"] == "bot:main"


async def test_without_a_key_the_bot_runs_against_its_own_simulator(tmp_path: Path) -> None:
    async with running_bot(tmp_path, DASHSCOPE_API_KEY="") as h:
        assert h.bot.services.simulator is not None
        assert "SIMULATED music" in h.logs.text
        iid = await h.song({"prompt": "a sea shanty about simulated whales"})
        final = await h.wait_final(iid, timeout=30)
        assert any(a.filename.endswith(".mp3") for a in final.attachments)
        assert h.sim.requests == []  # the test's simulator was not used: the bot's own one was
