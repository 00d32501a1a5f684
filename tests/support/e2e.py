"""End-to-end harness: the real SongBot, started by its real start path (``bot.start``), against the offline
Discord (services/offline) and the Fun-Music simulator, with a real SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from bot import SongBot, point_at_discord
from services.logs import LogFormat, setup_logging
from services.offline.discord import FakeDiscord, point_discord_py_at
from services.offline.simulator import FunMusicSimulator, Scenario
from services.settings import Settings, load_settings
from tests.support.sim_fixtures import SIM_KEY, running_simulator

#: How every progress message of an accepted song starts (queued, generating, preparing, uploading).
PROGRESS_MARKS = ("⏳", "🎼", "🎚", "📤")

TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.Gx1y2z.fake-discord-token-for-e2e-tests-0123456789"


class LogCapture(logging.Handler):
    """Every log line the bot writes during a test, after the bot's own redacting filter."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def bot_logging(log_format: LogFormat = "plain") -> Iterator[LogCapture]:
    """The bot's own logging set-up (``services.logs.setup_logging``, as ``python bot.py`` calls it, with the test
    token and key as its secrets) writing to a capturing handler; undone afterwards."""
    root = logging.getLogger()
    noisy = {name: logging.getLogger(name).level for name in ("discord.http", "discord.gateway", "aiohttp.access")}
    level = root.level
    capture = LogCapture()
    setup_logging("DEBUG", [TOKEN, SIM_KEY], handler=capture, log_format=log_format)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)


@dataclass
class Harness:
    bot: SongBot
    fake: FakeDiscord
    sim: FunMusicSimulator
    settings: Settings
    tmp_path: Path
    logs: LogCapture
    task: asyncio.Task[None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        return self.bot.services.store

    async def configure(self, **changes: Any) -> None:
        """Change the default guild's settings directly in the store (as a moderator's /songconfig would)."""
        await self.store.update_guild_settings(self.fake.guild.id, self.fake.guild.owner_id, changes)

    async def song(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> int:
        """Send `/song` and return the interaction id."""
        payload = self.fake.slash("song", dict(options or {}), **kwargs)
        await self.fake.send_interaction(payload)
        return int(payload["id"])

    async def command(self, name: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> int:
        payload = self.fake.slash(name, dict(options or {}), **kwargs)
        await self.fake.send_interaction(payload)
        return int(payload["id"])

    async def outcome(self, iid: int, timeout: float = 20.0) -> tuple[bool, str]:
        """How /song (or Regenerate) answered: ``(True, "")`` when the song was accepted, ``(False, text)`` with
        the member's ephemeral refusal otherwise — given at once (type 4), or after a defer under load (an
        ephemeral follow-up, or the private "thinking…" message edited)."""
        callback = await self.fake.wait_for_callback(iid, timeout)
        if callback.type == 4:
            assert callback.data.get("flags", 0) & 64, callback
            return False, str(callback.data.get("content") or "")
        assert callback.type == 5, callback

        def settled() -> bool:
            message = self.fake.original(iid)
            # a refusal after a public defer deletes the "thinking…" message, then follows up: wait for the latter
            return bool(self.fake.followups(iid)) or (
                message is not None and not message.deleted and not message.loading
            )

        await self.fake.wait_until(settled, timeout=timeout, what=f"the answer to {iid}")
        followups = self.fake.followups(iid)
        if followups:
            assert followups[0].ephemeral
            return False, followups[0].content
        message = self.fake.original(iid)
        assert message is not None
        if message.attachments or message.components or message.content.startswith(PROGRESS_MARKS):
            return True, ""
        assert message.ephemeral
        return False, message.content

    async def logged(self, text: str, timeout: float = 20.0) -> str:
        """The first log line containing ``text``, once the bot wrote it."""
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.logs.lines if text in line]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)

    async def wait_job_status(self, job_id: int, *statuses: str, timeout: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.store.get_job(job_id)
            if job is not None and job.status in statuses:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} is {job and job.status}, not {statuses}")
            await asyncio.sleep(0.05)

    async def wait_final(self, interaction_id: int, timeout: float = 20.0) -> Any:
        """The original response once it holds a final answer (song, refusal, failure or cancel)."""

        def final() -> bool:
            message = self.fake.original(interaction_id)
            if message is None or message.loading:
                return False
            text = message.content or ""
            return bool(message.attachments or message.embeds) or text.startswith(("❌", "🛑"))

        await self.fake.wait_until(final, timeout=timeout, what=f"final answer to {interaction_id}")
        return self.fake.original(interaction_id)


def e2e_env(sim: FunMusicSimulator, fake: FakeDiscord, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "DISCORD_TOKEN": TOKEN,
        "DASHSCOPE_API_KEY": SIM_KEY,
        "DASHSCOPE_BASE_URL": sim.base_url,
        "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'songbot.db'}",
        "SONGBOT_DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "DEBUG",
        "SONGBOT_MAX_RETRIES": "2",
        "SONGBOT_RETRY_BACKOFF": "0.01",
        "SONGBOT_IDLE_TIMEOUT": "5",
        "SONGBOT_TOTAL_DEADLINE": "60",
        "SONGBOT_ESTIMATED_SONG_SECONDS": "10",
        # refusals as immediate ephemeral answers, whatever the machine's load (the early defer has its own test)
        "SONGBOT_DEFER_AFTER": "2.5",
    }
    env.update(overrides)
    return env


@contextlib.asynccontextmanager
async def started_bot(
    settings: Settings, fake: FakeDiscord, sim: FunMusicSimulator, tmp_path: Path, logs: LogCapture
) -> AsyncIterator[Harness]:
    bot = SongBot(settings, guild_ready_timeout=0.1)
    harness = Harness(bot=bot, fake=fake, sim=sim, settings=settings, tmp_path=tmp_path, logs=logs)
    harness.task = asyncio.create_task(bot.start(settings.discord_token.reveal()))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield harness
    finally:
        if not bot.is_closed():
            await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await harness.task


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path, *, scenario: Scenario | None = None, fake: FakeDiscord | None = None, **env: str
) -> AsyncIterator[Harness]:
    """Simulator + offline Discord + the real bot, all on 127.0.0.1; everything closed afterwards."""
    scenario = scenario or Scenario(duration_s=3.0)
    logs = LogCapture()
    from services.logs import RedactingFilter

    root = logging.getLogger()
    async with running_simulator(scenario) as sim, contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = await stack.enter_async_context(FakeDiscord(token=TOKEN))
        settings = load_settings(e2e_env(sim, fake, tmp_path, **env))
        logs.addFilter(RedactingFilter(settings.secrets()))
        logs.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(logs)
        previous_level = root.level
        root.setLevel(logging.DEBUG)
        stack.callback(root.removeHandler, logs)
        stack.callback(root.setLevel, previous_level)
        quiet = logging.getLogger("aiosqlite")
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.WARNING)
        stack.enter_context(point_discord_py_at(fake))
        point_at_discord(settings)
        harness = await stack.enter_async_context(started_bot(settings, fake, sim, tmp_path, logs))
        yield harness


def is_discord_file_error(exc: BaseException) -> bool:
    return isinstance(exc, discord.HTTPException)


# --- fault-matrix helpers (tests/faults/) -------------------------------------------------------------

ERROR_ID_IN_TEXT = r"\(error id `([^`]+)`\)"


async def wait_for_job(h: Harness, user_id: int | None = None, timeout: float = 10.0) -> Any:
    """The newest job of a member (default: the fake's default member), once its row exists."""
    member = user_id if user_id is not None else h.fake.user.id
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await h.store.history(member, limit=1)
        if jobs:
            return jobs[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"member {member} has no job")
        await asyncio.sleep(0.05)


async def reservation_state(h: Harness, job_id: int) -> str | None:
    """ "held", "committed" or "refunded": what became of the quota a job reserved."""
    async with h.store.read() as tx:
        reservation = await tx.reservation(job_id)
    return None if reservation is None else str(reservation.state)


async def assert_refunded(h: Harness, job_id: int, user_id: int | None = None) -> None:
    """The job's reservation was given back: the member has used no song today."""
    member = user_id if user_id is not None else h.fake.user.id
    assert await reservation_state(h, job_id) == "refunded"
    usage = await h.bot.services.policy.member_usage(h.fake.guild.id, member)
    assert usage.songs_used == 0, usage


def error_id_of(text: str) -> str:
    """The short error id a failure text ends with."""
    import re

    match = re.search(ERROR_ID_IN_TEXT, text)
    assert match is not None, f"no error id in {text!r}"
    return match.group(1)


def switch_scenario_at(sim: FunMusicSimulator, request_number: int, scenario: Scenario) -> None:
    """From the `request_number`-th generation request on (1-based), the simulator plays `scenario`: a fault on
    the first attempt and a clean retry, without racing the client's backoff."""

    class _Switching(list[dict[str, Any]]):
        def append(self, item: dict[str, Any]) -> None:
            super().append(item)
            if len(self) == request_number:
                sim.scenario = scenario

    sim.requests = _Switching(sim.requests)
