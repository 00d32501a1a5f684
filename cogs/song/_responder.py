"""The one answer to one ``/song`` interaction, never late (see :class:`Responder`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import discord

from cogs._words import NO_PINGS

log = logging.getLogger("cogs.song")

#: More /song requests than this being checked at once is a burst: each further one defers before its checks.
BURST_CHECKS = 1


class Responder:
    """Answers one /song interaction exactly once, and never late.

    Refusals are best as an immediate ephemeral message (they cost nothing and only the member sees them), but the
    checks before them read and write the database, which under a burst can take longer than Discord's 3 s. So a
    guard defers by itself once ``defer_after_s`` has passed; a refusal after that replaces the "thinking…"
    message with an ephemeral follow-up. A lock keeps the guard and the checks from both answering (40060).
    """

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        ephemeral: bool,
        defer_after_s: float,
        urgent: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.urgent = urgent
        self._on_close = on_close
        self._closed = False
        self._lock = asyncio.Lock()
        self._guard = asyncio.create_task(self._defer_when_slow(defer_after_s))

    async def defer_if_urgent(self) -> None:
        """Under a burst, answer first and check after: the checks of many requests share one event loop."""
        if self.urgent:
            try:
                await self.defer()
            except discord.HTTPException as exc:
                log.warning("could not defer interaction %s: %s", self.interaction.id, exc)

    async def _defer_when_slow(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            # shielded: cancelling the guard must never cut a defer in flight (it would be sent but not recorded)
            await asyncio.shield(self.defer())
        except discord.HTTPException as exc:
            log.warning("could not defer interaction %s early: %s", self.interaction.id, exc)

    async def defer(self) -> None:
        """Defer ("thinking…") unless already answered. Raises HTTPException if Discord refuses."""
        async with self._lock:
            if not self.interaction.response.is_done():
                await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)

    async def refuse(self, text: str) -> None:
        self.close()
        async with self._lock:
            response = self.interaction.response
            if not response.is_done():
                await response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
                return
            try:
                if self.ephemeral:
                    await self.interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
                    return
                await self.interaction.delete_original_response()
            except discord.HTTPException as exc:
                log.warning("could not replace the deferred answer of %s: %s", self.interaction.id, exc)
            await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)

    def close(self) -> None:
        self._guard.cancel()
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()
