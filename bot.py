"""songbot's entry point.

``python bot.py``            run the Discord bot
``python bot.py generate …`` make one song from the command line (see ``python bot.py generate --help``)
``python bot.py sync``       push the slash commands to Discord now, then exit
``python bot.py invite``     print the url that adds the bot to a server
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from dotenv import load_dotenv

from services.clock import Clock, SystemClock
from services.errors import ConfigError, SongbotError
from services.funmusic.client import FunMusicClient
from services.jobs import JobManager
from services.logs import setup_logging
from services.policy import Policy
from services.settings import Settings, load_settings
from services.signals import stop_on_signals
from services.store import Store

log = logging.getLogger("songbot")

EXTENSIONS = ("cogs.song", "cogs.config", "cogs.housekeeping")

#: What the bot needs in a channel to post a song after the interaction token expires (and to post at all).
REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    attach_files=True,
    embed_links=True,
)


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


def point_at_discord(settings: Settings) -> None:
    """Use a self-hosted Discord-compatible server when DISCORD_API_BASE / DISCORD_GATEWAY_URL say so."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


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
        super().__init__(
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
        self.stopping = False

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("services are created in setup_hook")
        return self._services

    async def setup_hook(self) -> None:
        self._services = await self._create_services()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        if not self.sync_only:  # a `sync` run must not touch the jobs of a bot running elsewhere
            await self._recover_interrupted_jobs()

    async def _create_services(self) -> Services:
        settings = self.settings
        session = aiohttp.ClientSession()
        simulator = None
        base_url, api_key = settings.dashscope_base_url, settings.dashscope_api_key
        if settings.simulated:
            from services.simulator import start_simulator_for

            simulator, base_url, api_key = await start_simulator_for(settings)
        client = FunMusicClient.from_settings(session, settings, base_url=base_url, api_key=api_key)
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
        )
        return Services(settings, self.clock, session, client, store, policy, jobs, work_dir, simulator)

    def _command_fingerprint(self) -> str:
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    async def _sync_commands(self) -> None:
        """Sync only when the command set changed (or when asked): Discord limits command creates per day."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        marker = self.settings.data_dir / f"commands-{guild.id if guild else 'global'}.sha256"
        fingerprint = self._command_fingerprint()
        previous = await asyncio.to_thread(_read_text, marker)
        if previous == fingerprint and not self.force_sync:
            log.info("slash commands unchanged; not syncing")
            return
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (they may take up to an hour to appear)", len(synced))
        await asyncio.to_thread(marker.write_text, fingerprint)

    async def _recover_interrupted_jobs(self) -> None:
        """Jobs that were running when the bot stopped: marked interrupted, refunded, and their channels told."""
        jobs = await self.services.store.recover_interrupted()
        for job in jobs:
            if job.channel_id is None:
                continue
            channel = self.get_partial_messageable(job.channel_id)
            text = (
                f"<@{job.user_id}> the bot restarted while your song was being made, so it was stopped and your "
                "quota refunded. Please run `/song` again."
            )
            try:
                await channel.send(text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]))
            except discord.HTTPException as exc:
                log.warning("could not tell channel %s about interrupted job %s: %s", job.channel_id, job.id, exc)
        if jobs:
            log.info("marked %d interrupted job(s) and refunded their quota", len(jobs))

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s); %d server(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds))

    async def close(self) -> None:
        """Stop in order: jobs first (their members are told while Discord is still reachable), then the rest."""
        self.stopping = True
        services = self._services
        if services is not None:
            await services.jobs.shutdown()
        await super().close()
        if services is not None:
            await services.store.close()
            if services.simulator is not None:
                await services.simulator.close()
            await services.session.close()
            self._services = None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


async def run_bot(settings: Settings, *, force_sync: bool = False, sync_only: bool = False) -> None:
    point_at_discord(settings)
    await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True)
    bot = SongBot(settings, force_sync=force_sync, sync_only=sync_only)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with bot:
        if sync_only:
            await bot.login(settings.discord_token.reveal())
            return
        runner = asyncio.create_task(bot.start(settings.discord_token.reveal()))
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
    client = discord.Client(intents=discord.Intents.none())
    async with client:
        await client.login(settings.discord_token.reveal())
        app = await client.application_info()
        print(
            discord.utils.oauth_url(app.id, permissions=REQUIRED_PERMISSIONS, scopes=("bot", "applications.commands"))
        )


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
    load_dotenv()
    command = argv[0] if argv else "run"
    if command == "generate":
        from services.cli import run_generate

        return run_generate(argv[1:])
    if command == "demo":
        return run_demo_command(argv[1:])
    if command not in ("run", "sync", "invite"):
        print(f"error: unknown command {command!r}; use run, generate, sync or invite.", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
