"""The Discord half of ``python bot.py doctor`` (the rest is :mod:`services.doctor`): the token works and which
application it is, the commands Discord has match the bot's, and, for each server whose moderators limited /song
to some channels, whether the bot may post songs there. REST only (no gateway connection); nothing is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import discord

from cogs._text import plural
from services.doctor import CheckResult, fail, ok

CommandsMatch = Callable[[list[dict[str, Any]], list[Any]], bool]


async def check_token(client: discord.Client, token: str, api_base: str) -> list[CheckResult]:
    """Log in over REST; on success the client's ``application_id`` and ``user`` are set for the next checks."""
    name = "Discord token"
    try:
        await client.login(token)
    except discord.LoginFailure:
        return fail(name, "Discord refused DISCORD_TOKEN: copy the bot token again from the Developer Portal")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return fail(name, f"Discord cannot be reached at {api_base} ({type(exc).__name__}): check the network")
    except discord.HTTPException as exc:
        return fail(name, f"Discord answered {exc.status} to the login: try again later")
    app = await client.application_info()
    return ok(name, f"works: bot {client.user} of application “{app.name}” ({app.id})")


async def check_commands(
    client: discord.Client, wanted: list[dict[str, Any]], matches: CommandsMatch, dev_guild_id: int | None
) -> list[CheckResult]:
    """What Discord has for this application (globally, or in ``DEV_GUILD_ID``) against the bot's own set."""
    name = "slash commands"
    app_id = client.application_id
    if app_id is None:
        return fail(name, "not checked: the token did not work")
    if dev_guild_id is not None:
        present = await client.http.get_guild_commands(app_id, dev_guild_id)
        where = f"server {dev_guild_id} (DEV_GUILD_ID)"
    else:
        present = await client.http.get_global_commands(app_id)
        where = "every server (global)"
    if matches(wanted, list(present)):
        return ok(name, f"Discord has the bot's {plural(len(wanted), 'command')} for {where}")
    return fail(
        name,
        f"Discord has {plural(len(present), 'command')} for {where} that differ from the bot's "
        f"{len(wanted)}: start the bot (it syncs by itself) or run `python bot.py sync`",
    )


def _missing(permissions: discord.Permissions, required: discord.Permissions) -> list[str]:
    lacking = discord.Permissions(required.value & ~permissions.value)
    return [name.replace("_", " ").title() for name, value in lacking if value]


async def check_song_channels(
    client: discord.Client, channels_by_guild: Mapping[int, Sequence[int]], required: discord.Permissions
) -> list[CheckResult]:
    """For each server with `/songconfig channels` set: may the bot post songs in each of those channels?"""
    if client.user is None:
        return fail("song channels", "not checked: the token did not work")
    if not channels_by_guild:
        return ok("song channels", "no server limits /song to some channels; permissions are checked per request")
    results: list[CheckResult] = []
    for guild_id, channel_ids in channels_by_guild.items():
        results.extend(await _check_guild(client, client.user.id, guild_id, channel_ids, required))
    return results


async def _check_guild(
    client: discord.Client, bot_id: int, guild_id: int, channel_ids: Sequence[int], required: discord.Permissions
) -> list[CheckResult]:
    try:
        guild = await client.fetch_guild(guild_id)
        member = await guild.fetch_member(bot_id)
        channels = {channel.id: channel for channel in await guild.fetch_channels()}
    except discord.HTTPException as exc:
        return fail(f"server {guild_id}", f"the bot cannot see this server ({exc.status}): was it removed?")
    results: list[CheckResult] = []
    for channel_id in channel_ids:
        name = f"#{channels[channel_id].name} in {guild.name}" if channel_id in channels else f"{guild.name}"
        channel = channels.get(channel_id)
        if channel is None:
            results += fail(name, f"channel {channel_id} no longer exists: `/songconfig channels remove` it")
            continue
        missing = _missing(channel.permissions_for(member), required)
        if missing:
            results += fail(name, f"the bot may not post songs here: it lacks {', '.join(missing)}")
        else:
            results += ok(name, "the bot may post songs here")
    return results
