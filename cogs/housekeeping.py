"""Runs :func:`services.housekeeping.sweep` once at start and then every hour (``discord.ext.tasks``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from discord.ext import commands, tasks

from services.housekeeping import sweep

if TYPE_CHECKING:
    from bot import SongBot

log = logging.getLogger(__name__)

SWEEP_EVERY_HOURS = 1.0


class HousekeepingCog(commands.Cog):
    def __init__(self, bot: SongBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.sweeper.start()

    async def cog_unload(self) -> None:
        self.sweeper.cancel()

    @tasks.loop(hours=SWEEP_EVERY_HOURS)
    async def sweeper(self) -> None:
        services = self.bot.services
        try:
            await sweep(services.store, services.work_dir, services.settings.retention_days)
        except Exception:  # the next hour tries again; a sweep must never stop the bot
            log.exception("housekeeping failed")


async def setup(bot: SongBot) -> None:
    await bot.add_cog(HousekeepingCog(bot))
