"""``/song``: the command and its cog (``_cog``), its form and buttons (``_views``), the one answer to each request
(``_responder``), and how a job shows itself on Discord (``_delivery``). Imports run one way: ``_cog`` imports the
others, ``_delivery`` imports ``_views`` (its buttons), and ``_views`` and ``_responder`` import nothing of the
package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.song._cog import SongCog
from cogs.song._views import CancelButton, RegenerateButton

if TYPE_CHECKING:
    from bot import SongBot

__all__ = ["CancelButton", "RegenerateButton", "SongCog", "setup"]


async def setup(bot: SongBot) -> None:
    bot.add_dynamic_items(CancelButton, RegenerateButton)
    await bot.add_cog(SongCog(bot))
