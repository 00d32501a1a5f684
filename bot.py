"""songbot's entry point: ``python bot.py`` in a checkout, or the ``songbot`` command once installed.

``songbot``              run the Discord bot
``songbot generate …``   make one song from the command line (see ``songbot generate --help``)
``songbot sync``         push the slash commands to Discord now, then exit
``songbot invite``       print the url that adds the bot to a server
``songbot demo``         the bot against an offline Discord and the simulator, narrated (no token, no key)
``songbot --version``    print the version
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from dotenv import find_dotenv, load_dotenv

# REQUIRED_PERMISSIONS is re-exported: the permissions the invite asks for
from cogs._checks import REQUIRED_PERMISSIONS as REQUIRED_PERMISSIONS
from cogs._words import NO_PINGS, interrupted_by_dm, interrupted_in_channel, interrupted_in_place, mention_only
from services import startup
from services.clock import Clock, SystemClock
from services.errors import ConfigError, SongbotError
from services.funmusic.client import FunMusicClient
from services.health import HealthServer
from services.housekeeping import sweep
from services.jobs import JobManager
from services.logs import setup_logging
from services.metrics import Metrics
from services.policy import Policy
from services.settings import Settings, load_settings
from services.signals import stop_on_signals
from services.store import JobRecord, Store

log = logging.getLogger("songbot")

EXTENSIONS = ("cogs.song", "cogs.config", "cogs.housekeeping")
#: Extensions with no commands, only background work; ``sync`` does not load them.
BACKGROUND_EXTENSIONS = frozenset({"cogs.housekeeping"})
#: An interaction token edits the member's message for 15 minutes; a restart leaves a margin before giving up on it.
TOKEN_USABLE_FOR = timedelta(minutes=14)


@dataclass
class Services:
    """Everything not Discord that the cogs use; created in ``setup_hook`` and closed on shutdown."""

    settings: Settings
    clock: Clock
    session: aiohttp.ClientSession
    client: FunMusicClient
    store: Store
    policy: Policy
    jobs: JobManager
    work_dir: Path
    simulator: Any | None = None
    metrics: Metrics = field(default_factory=Metrics)


def point_at_discord(settings: Settings) -> None:
    """Use a self-hosted Discord-compatible server when DISCORD_API_BASE / DISCORD_GATEWAY_URL say so."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def quiet_voice_warnings() -> None:
    """songbot uses no voice, so discord.py's start-up warnings about missing PyNaCl and davey are noise."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


class SongTree(app_commands.CommandTree["SongBot"]):
    """The last error handler: any error no cog handled becomes words and an error id, never "interaction failed"."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        wrapped = SongbotError("unexpected")
        log.error(
            "unhandled error in /%s [error %s]",
            interaction.command and interaction.command.qualified_name,
            wrapped.error_id,
            exc_info=error,
        )
        text = f"Something went wrong on the bot's side. (error id `{wrapped.error_id}`)"
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report error %s to the member", wrapped.error_id)


class SongBot(commands.Bot):
    """The bot: owns the shared resources and the job manager's life."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        force_sync: bool = False,
        sync_only: bool = False,
        **options: Any,
    ) -> None:
        quiet_voice_warnings()
        self.metrics = Metrics()
        super().__init__(
            http_trace=self.metrics.discord_trace(),
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False),
            help_command=None,
            tree_cls=SongTree,
            **options,
        )
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.force_sync = force_sync or sync_only
        self.sync_only = sync_only
        self._services: Services | None = None
        self._health: HealthServer | None = None
        self._lag_sampler: asyncio.Task[None] | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("services are created in setup_hook")
        return self._services

    async def setup_hook(self) -> None:
        self._services = await self._create_services()
        if not self.sync_only:
            await self._start_health()  # first: a port in use stops the start before anything else is done
        for extension in EXTENSIONS:
            if self.sync_only and extension in BACKGROUND_EXTENSIONS:
                continue  # `sync` pushes the commands and exits: no sweeps of a data folder a running bot may use
            await self.load_extension(extension)
        await self._sync_commands()
        if not self.sync_only:  # a `sync` run must not touch the jobs of a bot running elsewhere
            await self._recover_interrupted_jobs()
            # now that no job of the last run counts as running: its job folders and partial files go at once
            await sweep(self.services.store, self.services.work_dir, retention_days=0)

    @property
    def health_port(self) -> int | None:
        """The port /healthz and /metrics answer on (the one picked when SONGBOT_HEALTH_PORT=0), or None."""
        return self._health.port if self._health is not None else None

    async def _start_health(self) -> None:
        """Metrics always (cheap); the HTTP port only when SONGBOT_HEALTH_PORT is set."""
        services = self.services
        self.metrics.watch_database(services.store, services.policy)
        self._lag_sampler = asyncio.create_task(self.metrics.sample_loop_lag(), name="songbot-loop-lag")
        if self.settings.health_port is None:
            return

        async def database() -> bool:
            await services.store.schema_version()
            return True

        async def gateway() -> bool:
            connection = self.ws  # None before the first connection; .open is False while reconnecting
            return self.is_ready() and not self.is_closed() and connection is not None and connection.open

        checks = {"database": database, "gateway": gateway}
        health = HealthServer(self.metrics, checks, host=self.settings.health_host, port=self.settings.health_port)
        try:
            await health.start()
        except OSError as exc:
            await health.close()
            where = f"{self.settings.health_host}:{self.settings.health_port}"
            raise startup.StartupError(
                f"The health port {where} cannot be opened ({exc.strerror or exc}); set SONGBOT_HEALTH_PORT to a "
                "free port, or leave it empty."
            ) from None
        self._health = health

    async def _create_services(self) -> Services:
        settings = self.settings
        session = aiohttp.ClientSession()
        simulator = None
        base_url, api_key = settings.dashscope_base_url, settings.dashscope_api_key
        if settings.simulated:
            from services.offline.simulator import start_simulator_for

            simulator, base_url, api_key = await start_simulator_for(settings)
        client = FunMusicClient.from_settings(session, settings, base_url=base_url, api_key=api_key)
        client.on_service_error = self.metrics.dashscope_error
        store = await Store.open(settings.database_url, clock=self.clock)
        policy = Policy(store, self.clock, global_daily_seconds=settings.global_daily_seconds)
        work_dir = settings.data_dir / "work"
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
        jobs = JobManager(
            generator=client,
            store=store,
            ledger=policy,
            work_dir=work_dir,
            max_concurrent=settings.max_concurrent_generations,
            queue_size=settings.queue_size,
            metrics=self.metrics,
        )
        return Services(settings, self.clock, session, client, store, policy, jobs, work_dir, simulator, self.metrics)

    def command_payloads(self) -> list[dict[str, Any]]:
        """The commands as Discord would receive them (for ``DEV_GUILD_ID``, the global ones copied there)."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        return [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]

    async def _sync_commands(self) -> None:
        """Sync when what Discord has for this application differs from the tree (or when asked).

        Decided from Discord itself (one GET), not from a record on disk: a new application (another token), commands
        deleted in the Developer Portal or a second checkout all get their commands, and an unchanged set is not
        pushed again (Discord limits command creates per day).
        """
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        wanted = self.command_payloads()
        if not self.force_sync:
            app_id = self.application_id
            assert app_id is not None  # set by login, before setup_hook
            if guild is not None:
                present = await self.http.get_guild_commands(app_id, guild.id)
            else:
                present = await self.http.get_global_commands(app_id)
            if commands_match(wanted, list(present)):
                log.info("slash commands unchanged; not syncing")
                return
        if guild is not None:
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (they may take up to an hour to appear)", len(synced))

    async def _recover_interrupted_jobs(self) -> None:
        """Jobs that were running when the bot stopped: marked interrupted, refunded, and their members told.

        Where the job's interaction token still lives, its own message is edited (no stale queue position or live
        Cancel); otherwise a public song's channel is told, and a private song's member by DM. One job's notice
        failing never stops the others or the start.
        """
        jobs = await self.services.store.recover_interrupted()
        for job in jobs:
            try:
                await self._tell_interrupted(job)
            except Exception:
                log.exception("could not tell anyone about interrupted job %s", job.id)
        if jobs:
            log.info("marked %d interrupted job(s) and refunded their quota", len(jobs))

    async def _tell_interrupted(self, job: JobRecord) -> None:
        if await self._edit_interrupted_message(job):
            return
        if job.user_id is None:  # the member erased their data (/songdata delete): nobody to address
            log.info("interrupted job %s belonged to a member who erased their data; not announced", job.id)
            return
        try:
            if job.options.get("private"):
                dm = await self.create_dm(discord.Object(job.user_id))
                await dm.send(interrupted_by_dm(), allowed_mentions=NO_PINGS)
            else:
                channel = self.get_partial_messageable(job.channel_id)
                await channel.send(interrupted_in_channel(job.user_id), allowed_mentions=mention_only(job.user_id))
        except discord.HTTPException as exc:
            log.warning("could not tell the member of interrupted job %s: %s", job.id, exc)

    async def _edit_interrupted_message(self, job: JobRecord) -> bool:
        """Edit the job's original response while its interaction token is valid; False when it could not."""
        token = job.interaction_token
        if not token or self.application_id is None or self.clock.now() >= job.created_at + TOKEN_USABLE_FOR:
            return False
        webhook = discord.Webhook.partial(self.application_id, token, client=self)
        try:
            # "@original": the interaction's first response, as discord.py's own edit_original_response addresses it
            # (its signature says int because every other message is addressed by id)
            await webhook.edit_message(
                cast(int, "@original"), content=interrupted_in_place(), view=None, allowed_mentions=NO_PINGS
            )
        except discord.HTTPException as exc:
            log.info("could not edit the message of interrupted job %s (%s); posting a notice instead", job.id, exc)
            return False
        return True

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s); %d server(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds))

    async def close(self) -> None:
        """Stop in order: jobs first (their members are told while Discord is still reachable), then the rest."""
        services = self._services
        if services is not None:
            await services.jobs.shutdown()
        if self._health is not None:
            await self._health.close()
            self._health = None
        if self._lag_sampler is not None:
            self._lag_sampler.cancel()
            self._lag_sampler = None
        await super().close()
        if services is not None:
            await services.store.close()
            if services.simulator is not None:
                await services.simulator.close()
            await services.session.close()
            self._services = None


#: Fields Discord fills in itself when a command leaves them out (``None`` locally means "Discord's default").
_SERVER_DEFAULTED = frozenset({"contexts", "integration_types", "name_localizations", "description_localizations"})


def _empty(value: object) -> bool:
    return value is None or value is False or value == [] or value == {}


def _same(local: object, remote: object, key: str = "") -> bool:
    """Whether Discord's copy says what the local payload says; Discord leaves out empty fields (``required:
    false``, no options) and may add fields of its own (``id``, ``version``), which are not differences."""
    if isinstance(local, dict):
        theirs = remote if isinstance(remote, dict) else {}
        return all(
            (name in _SERVER_DEFAULTED and value is None) or _same(value, theirs.get(name), name)
            for name, value in local.items()
        )
    if isinstance(local, list):
        theirs_list = remote if isinstance(remote, list) else []
        return len(local) == len(theirs_list) and all(_same(a, b) for a, b in zip(local, theirs_list, strict=True))
    if _empty(local) and _empty(remote):
        return True
    if key == "default_member_permissions" and local is not None and remote is not None:
        return str(local) == str(remote)  # Discord answers with a string
    return local == remote


def commands_match(wanted: list[dict[str, Any]], present: list[Any]) -> bool:
    """Whether the commands Discord has (``present``, as fetched) are exactly the ones the tree would sync."""

    def key(command: Mapping[str, Any]) -> tuple[str, int]:
        return str(command["name"]), int(command.get("type") or 1)

    theirs = {key(command): command for command in present}
    if len(theirs) != len(present) or set(theirs) != {key(command) for command in wanted}:
        return False
    return all(_same(command, theirs[key(command)]) for command in wanted)


class DiscordUnreachable(SongbotError):
    """Discord (or DISCORD_API_BASE) could not be reached or answered nonsense at start; one sentence."""


async def login(bot: commands.Bot, settings: Settings) -> None:
    """``bot.login`` (which also runs ``setup_hook``), with an unreachable Discord turned into one sentence."""
    where = settings.discord_api_base or "discord.com"
    try:
        await bot.login(settings.discord_token.reveal())
    except discord.LoginFailure:
        raise
    except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DiscordUnreachable(
            f"Cannot reach Discord at {where} ({reason}); check the network connection and DISCORD_API_BASE."
        ) from None
    except discord.HTTPException as exc:
        raise DiscordUnreachable(
            f"Discord at {where} answered HTTP {exc.status} ({' '.join(exc.text.split())[:200] or exc.response.reason})"
            "; check DISCORD_API_BASE (leave it empty for Discord itself)."
        ) from None


async def run_bot(settings: Settings, *, force_sync: bool = False, sync_only: bool = False) -> None:
    point_at_discord(settings)
    await startup.prepare(settings, SystemClock())
    bot = SongBot(settings, force_sync=force_sync, sync_only=sync_only)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with bot:
        await login(bot, settings)
        if sync_only:
            return
        runner = asyncio.create_task(bot.connect())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("stopping: telling members with songs in progress")
            await bot.close()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def print_invite(settings: Settings) -> None:
    point_at_discord(settings)
    quiet_voice_warnings()
    client = discord.Client(intents=discord.Intents.none())
    async with client:
        await client.login(settings.discord_token.reveal())
        app = await client.application_info()
        print(
            discord.utils.oauth_url(app.id, permissions=REQUIRED_PERMISSIONS, scopes=("bot", "applications.commands"))
        )


USAGE = """\
usage: songbot [run | generate ... | sync | invite | doctor | demo ...] [--help] [--version]
       (or python bot.py ... in a checkout)

  run         run the Discord bot (the default)
  generate    make one song from the command line; songbot generate --help for its options
  sync        push the slash commands to Discord now, then exit
  invite      print the url that adds the bot to a server
  doctor      check the token, the commands, DashScope, ffmpeg, the database, the work folder and the
              channels moderators chose; one line each, exit 1 when something fails
  demo        the bot against an offline Discord and the simulator, narrated; songbot demo --help

Settings come from the environment and from .env in the current directory (see .env.example)."""


def version() -> str:
    """The installed version (from the checkout's pyproject.toml when ``python bot.py`` runs uninstalled)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("songbot")
    except PackageNotFoundError:
        import tomllib

        with (Path(__file__).resolve().parent / "pyproject.toml").open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])


async def run_doctor(settings: Settings, out: TextIO) -> int:
    """``songbot doctor``: one line per check (see :mod:`services.doctor` and :mod:`cogs.doctor`); 1 if any failed."""
    from cogs import doctor as discord_checks
    from services import doctor

    point_at_discord(settings)
    quiet_voice_warnings()
    client = discord.Client(intents=discord.Intents.none())
    offline = SongBot(settings)  # never logged in: only its command tree is read, to compare with Discord's
    database_ok = False

    async def token() -> list[doctor.CheckResult]:
        return await discord_checks.check_token(client, settings.discord_token.reveal(), discord.http.Route.BASE)

    async def commands_() -> list[doctor.CheckResult]:
        for extension in EXTENSIONS:
            if extension not in BACKGROUND_EXTENSIONS:
                await offline.load_extension(extension)
        wanted = offline.command_payloads()
        return await discord_checks.check_commands(client, wanted, commands_match, settings.dev_guild_id)

    async def database() -> list[doctor.CheckResult]:
        nonlocal database_ok
        results = await doctor.check_database(settings)
        database_ok = all(result.verdict is doctor.Verdict.OK for result in results)
        return results

    async def channels() -> list[doctor.CheckResult]:
        if not database_ok:
            return doctor.skip("song channels", "not checked: the database check failed")
        store = await Store.open(settings.database_url, clock=SystemClock())  # current: opening migrates nothing
        try:
            configured = await store.guilds_with_channels()
        finally:
            await store.close()
        return await discord_checks.check_song_channels(client, configured, REQUIRED_PERMISSIONS)

    checks: list[tuple[str, doctor.Check]] = [
        ("Discord token", token),
        ("slash commands", commands_),
        ("DashScope", functools.partial(doctor.check_dashscope, settings)),
        ("ffmpeg", functools.partial(doctor.check_ffmpeg_runs, settings)),
        ("database", database),
        ("work folder", functools.partial(doctor.check_work_dir_writable, settings)),
        ("song channels", channels),
    ]
    try:
        return await doctor.run_checklist(checks, out)
    finally:
        await client.close()
        await offline.close()


def run_demo_command(args: list[str]) -> int:
    """``python bot.py demo [--out DIR] [--song-seconds N]``: the real bot against the offline Discord and the
    simulator, narrated on the terminal (see :mod:`services.offline.demo`)."""
    import argparse

    from services.offline.demo import run_demo

    parser = argparse.ArgumentParser(prog="bot.py demo", description=run_demo_command.__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where the songs are written")
    parser.add_argument("--song-seconds", type=float, default=20.0, help="length of each simulated song")
    options = parser.parse_args(args)
    setup_logging("ERROR", [])  # the conversation is the output; only errors besides it
    print(
        "songbot demo: the real bot against an offline Discord and the Fun-Music simulator "
        "(no token, no key, no network). Songs are test tones."
    )
    saved = asyncio.run(
        run_demo(
            lambda settings: SongBot(settings, guild_ready_timeout=0.1),
            out_dir=options.out,
            out=sys.stdout,
            song_seconds=options.song_seconds,
            point_at_discord=point_at_discord,
        )
    )
    print(f"\n{len(saved)} file(s) written to {options.out}/:")
    for path in saved:
        print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return 0
    if argv[:1] in (["-V"], ["--version"]):
        print(f"songbot {version()}")
        return 0
    load_dotenv(find_dotenv(usecwd=True))  # the operator's .env where they run it (an installed bot.py is elsewhere)
    command = argv[0] if argv else "run"
    if command == "generate":
        from services.cli import run_generate

        return run_generate(argv[1:])
    if command == "demo":
        return run_demo_command(argv[1:])
    if command not in ("run", "sync", "invite", "doctor"):
        print(
            f"error: unknown command {command!r}; use run, generate, sync, invite, doctor or demo (see --help).",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if command == "doctor":
        setup_logging("CRITICAL", settings.secrets())  # the checklist is the output
        return asyncio.run(run_doctor(settings, sys.stdout))
    setup_logging(settings.log_level, settings.secrets(), log_format=settings.log_format)
    try:
        if command == "invite":
            asyncio.run(print_invite(settings))
        else:
            asyncio.run(run_bot(settings, sync_only=command == "sync"))
    except discord.LoginFailure:
        print(
            "error: Discord refused DISCORD_TOKEN; copy the bot token again from the Developer Portal.", file=sys.stderr
        )
        return 2
    except (startup.StartupError, DiscordUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
