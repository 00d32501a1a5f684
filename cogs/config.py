"""Moderator and member commands around /song: /songconfig, /songusage, /songhistory, /songdata.

Discord's ``default_permissions`` only hides commands in the client, and moderators can change it, so every
moderator action is checked again here from the member's permissions in the interaction payload.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import is_manager
from cogs._limits import CONTENT, EMBED_DESCRIPTION, FIELD_VALUE, escaped, fit_embed, fit_lines, fit_text
from cogs._words import (
    NO_PINGS,
    SHOWN_IDS,
    clip,
    format_duration,
    global_usage_text,
    input_text,
    jump_url,
    listing,
    more_members,
    older_songs_not_shown,
    plural,
    relative,
    setting_allowed,
    setting_description,
    setting_mentions,
    setting_value,
)
from services.errors import InvalidInput
from services.guild_settings import SETTINGS, SPECS, GuildSettings, SettingSpec
from services.policy import GlobalUsage, MemberUsage, ServerUsage
from services.store import JobRecord

if TYPE_CHECKING:
    from bot import Services, SongBot

log = logging.getLogger(__name__)

NOT_A_MODERATOR = "Only members with the Manage Server permission can change /song's settings."


#: The bounds of /songconfig set's number options, shown and enforced by Discord, come from guild_settings.
_COOLDOWN = SPECS["cooldown"]
_MEMBER_SONGS = SPECS["member_daily_songs"]
_SERVER_SONGS = SPECS["server_daily_songs"]
_SERVER_MINUTES = SPECS["server_daily_minutes"]
_CONCURRENT = SPECS["max_concurrent"]
_QUEUED = SPECS["max_queued"]


def _about(spec: SettingSpec) -> str:
    """An option's description: the setting's own words and its range (Discord allows 100 characters)."""
    return clip(f"{setting_description(spec).rstrip('.')} ({setting_allowed(spec)})", 100)


#: Songs /songhistory lists, newest first.
HISTORY_SONGS = 10
#: Characters of a song's title in /songhistory, counted after escaping.
HISTORY_TITLE = 80


def _list_change(spec: SettingSpec, old: tuple[int, ...], new: tuple[int, ...]) -> str:
    """``3 channels → 4 channels (added <#9>)``: counts once a list is long, and what was added or removed."""

    def side(ids: tuple[int, ...]) -> str:
        return setting_value(spec, ids) if len(ids) <= SHOWN_IDS else plural(len(ids), spec.unit)

    added = [i for i in new if i not in old]
    removed = [i for i in old if i not in new]
    parts = [f"added {listing(setting_mentions(spec, added), SHOWN_IDS)}"] if added else []
    parts += [f"removed {listing(setting_mentions(spec, removed), SHOWN_IDS)}"] if removed else []
    detail = f" ({'; '.join(parts)})" if parts and (len(old) > SHOWN_IDS or len(new) > SHOWN_IDS) else ""
    return f"{side(old)} → {side(new)}{detail}"


def describe_change(before: GuildSettings, after: GuildSettings) -> str:
    """``cooldown: 60 seconds → 30 seconds`` lines for every setting that changed; long lists as counts. Fits
    a message whatever the settings."""
    lines = []
    for spec in SETTINGS:
        old, new = getattr(before, spec.name), getattr(after, spec.name)
        if old == new:
            continue
        if spec.kind == "ids":
            lines.append(f"**{spec.name}**: {_list_change(spec, old, new)}")
        else:
            lines.append(f"**{spec.name}**: {setting_value(spec, old)} → {setting_value(spec, new)}")
    return fit_text("\n".join(lines) or "Nothing changed.", CONTENT)


def settings_embed(settings: GuildSettings, guild_name: str) -> discord.Embed:
    embed = discord.Embed(title=f"/song settings for {clip(guild_name, 200)}", colour=discord.Colour.blurple())
    for spec, value, is_default in settings.rows():
        state = "default" if is_default else f"default {setting_value(spec, spec.default)}"
        embed.add_field(
            name=spec.name,
            value=fit_text(
                f"**{setting_value(spec, value)}** ({state})\n{setting_description(spec)}\n"
                f"Allowed: {setting_allowed(spec)}",
                FIELD_VALUE,
            ),
            inline=False,
        )
    embed.set_footer(text="Members with Manage Server are exempt from role limits.")
    return fit_embed(embed)


def history_embed(jobs: list[JobRecord], now: datetime) -> discord.Embed:
    """``/songhistory``: one line per song, newest first. Titles are escaped, then cut; when the lines with
    their download links do not all fit, the older ones go without the link, and what still does not fit is
    counted ("and 3 older songs")."""
    lines: list[str] = []
    shorts: list[str] = []
    for job in jobs:
        title = escaped(str(job.options.get("title") or job.prompt or "song"), HISTORY_TITLE) or "song"
        line = f"**{title}** · {job.status} · {relative(job.created_at.timestamp())}"
        jump = jump_url(job)
        if jump:
            line += f" · [message]({jump})"
        shorts.append(line)
        url = job.url_if_valid(now)
        if url and job.url_expires_at:
            line += f" · [download]({url}) (expires {relative(job.url_expires_at.timestamp())})"
        lines.append(line)
    description = fit_lines(lines, EMBED_DESCRIPTION, short=shorts, more=older_songs_not_shown)
    embed = discord.Embed(title="Your recent songs", description=description, colour=discord.Colour.blurple())
    return fit_embed(embed)


def usage_embed(mine: MemberUsage, server: ServerUsage | None, everywhere: GlobalUsage | None = None) -> discord.Embed:
    """``/songusage``: the member's day, for moderators the server's, and in the operator's own server what
    DashScope billed across every server beside what was delivered."""
    embed = discord.Embed(title="/song usage today (UTC)", colour=discord.Colour.blurple())
    embed.add_field(
        name="You",
        value=f"{mine.songs_used} of {plural(mine.songs_limit, 'song')}, {format_duration(mine.seconds_used)} of "
        f"music; {plural(mine.songs_left, 'song')} left today.",
        inline=False,
    )
    if server is not None:
        embed.add_field(
            name="This server",
            value=f"{server.songs_used} of {plural(server.songs_limit, 'song')}, "
            f"{plural(server.seconds_used / 60, 'minute')} of {plural(server.seconds_limit / 60, 'minute')} "
            "of music.",
            inline=False,
        )
        if server.top:
            rows = [
                f"{f'<@{row.user_id}>' if row.user_id else '(deleted member)'}: {plural(row.songs, 'song')}, "
                f"{format_duration(row.seconds)}"
                for row in server.top
            ]
            embed.add_field(name="Top members", value=fit_lines(rows, FIELD_VALUE, more=more_members), inline=False)
    if everywhere is not None:
        embed.add_field(name="All servers (operator)", value=global_usage_text(everywhere), inline=False)
    embed.set_footer(text="Quotas reset at 00:00 UTC.")
    embed.add_field(name="Resets", value=relative(mine.resets_at.timestamp()), inline=False)
    return fit_embed(embed)


class ConfigCog(commands.Cog):
    def __init__(self, bot: SongBot) -> None:
        self.bot = bot

    @property
    def services(self) -> Services:
        return self.bot.services

    async def _reply(
        self, interaction: discord.Interaction, text: str | None = None, *, embed: discord.Embed | None = None
    ) -> None:
        """Every answer of this cog: ephemeral, pinging nobody, and within Discord's limits whatever it holds."""
        kwargs: dict[str, Any] = {} if embed is None else {"embed": fit_embed(embed)}
        content = None if text is None else fit_text(text, CONTENT)
        await interaction.response.send_message(content, ephemeral=True, allowed_mentions=NO_PINGS, **kwargs)

    async def _guard(self, interaction: discord.Interaction) -> bool:
        """Guild only and Manage Server, checked by the bot itself. Answers and returns False when refused."""
        if interaction.guild_id is None:
            await self._reply(interaction, "Use this command in a server.")
            return False
        if not is_manager(interaction):
            await self._reply(interaction, NOT_A_MODERATOR)
            return False
        return True

    songconfig = app_commands.Group(
        name="songconfig",
        description="Set who may use /song, where, and how much (Manage Server).",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    channels = app_commands.Group(name="channels", description="Channels where /song works", parent=songconfig)
    roles = app_commands.Group(name="roles", description="Roles allowed to use /song", parent=songconfig)

    @songconfig.command(name="show", description="Every /song setting with its value and default.")
    async def show(self, interaction: discord.Interaction) -> None:
        if not await self._guard(interaction):
            return
        assert interaction.guild_id is not None
        current = await self.services.store.get_guild_settings(interaction.guild_id)
        name = interaction.guild.name if interaction.guild else str(interaction.guild_id)
        await self._reply(interaction, embed=settings_embed(current, name))

    @songconfig.command(name="set", description="Change one or more /song settings.")
    @app_commands.describe(
        enabled="Whether members can make songs here at all",
        cooldown=_about(_COOLDOWN),
        member_daily_songs=_about(_MEMBER_SONGS),
        server_daily_songs=_about(_SERVER_SONGS),
        server_daily_minutes=_about(_SERVER_MINUTES),
        max_concurrent=_about(_CONCURRENT),
        max_queued=_about(_QUEUED),
        default_voice="Voice when a member doesn't choose",
        default_format="Format when a member doesn't choose",
        watermark="Audible AI watermark: always, never, or the member's choice",
        private_allowed="Whether members may ask for private results",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        enabled: bool | None = None,
        cooldown: app_commands.Range[int, _COOLDOWN.low, _COOLDOWN.high] | None = None,
        member_daily_songs: app_commands.Range[int, _MEMBER_SONGS.low, _MEMBER_SONGS.high] | None = None,
        server_daily_songs: app_commands.Range[int, _SERVER_SONGS.low, _SERVER_SONGS.high] | None = None,
        server_daily_minutes: app_commands.Range[int, _SERVER_MINUTES.low, _SERVER_MINUTES.high] | None = None,
        max_concurrent: app_commands.Range[int, _CONCURRENT.low, _CONCURRENT.high] | None = None,
        max_queued: app_commands.Range[int, _QUEUED.low, _QUEUED.high] | None = None,
        default_voice: Literal["female", "male"] | None = None,
        default_format: Literal["mp3", "wav", "ogg"] | None = None,
        watermark: Literal["always", "never", "member"] | None = None,
        private_allowed: bool | None = None,
    ) -> None:
        if not await self._guard(interaction):
            return
        assert interaction.guild_id is not None
        given = {
            "enabled": enabled,
            "cooldown": cooldown,
            "member_daily_songs": member_daily_songs,
            "server_daily_songs": server_daily_songs,
            "server_daily_minutes": server_daily_minutes,
            "max_concurrent": max_concurrent,
            "max_queued": max_queued,
            "default_voice": default_voice,
            "default_format": default_format,
            "watermark": watermark,
            "private_allowed": private_allowed,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            await self._reply(interaction, "Choose at least one setting to change, e.g. `/songconfig set cooldown:30`.")
            return
        try:
            before, after = await self.services.store.update_guild_settings(
                interaction.guild_id, interaction.user.id, changes
            )
        except InvalidInput as exc:
            await self._reply(interaction, input_text(exc))
            return
        await self._reply(interaction, describe_change(before, after))

    @songconfig.command(name="reset", description="Put every /song setting back to its default.")
    async def reset(self, interaction: discord.Interaction) -> None:
        if not await self._guard(interaction):
            return
        assert interaction.guild_id is not None
        before, after = await self.services.store.reset_guild_settings(interaction.guild_id, interaction.user.id)
        await self._reply(interaction, describe_change(before, after))

    # --- channels and roles --------------------------------------------------------------------------------------
    async def _list_change(self, interaction: discord.Interaction, method: str, *args: int) -> None:
        if not await self._guard(interaction):
            return
        assert interaction.guild_id is not None
        try:
            before, after = await getattr(self.services.store, method)(interaction.guild_id, interaction.user.id, *args)
        except InvalidInput as exc:
            await self._reply(interaction, input_text(exc))
            return
        await self._reply(interaction, describe_change(before, after))

    @channels.command(name="add", description="Allow /song in a channel (once any is listed, only listed ones).")
    async def channels_add(self, interaction: discord.Interaction, channel: app_commands.AppCommandChannel) -> None:
        await self._list_change(interaction, "add_channel", channel.id)

    @channels.command(name="remove", description="Stop allowing /song in a listed channel.")
    async def channels_remove(self, interaction: discord.Interaction, channel: app_commands.AppCommandChannel) -> None:
        await self._list_change(interaction, "remove_channel", channel.id)

    @channels.command(name="clear", description="Allow /song in every channel again.")
    async def channels_clear(self, interaction: discord.Interaction) -> None:
        await self._list_change(interaction, "clear_channels")

    @roles.command(name="add", description="Allow a role to use /song (once any is listed, only listed roles).")
    async def roles_add(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._list_change(interaction, "add_role", role.id)

    @roles.command(name="remove", description="Stop allowing a listed role.")
    async def roles_remove(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._list_change(interaction, "remove_role", role.id)

    @roles.command(name="clear", description="Let everyone use /song again.")
    async def roles_clear(self, interaction: discord.Interaction) -> None:
        await self._list_change(interaction, "clear_roles")

    # --- /songusage ----------------------------------------------------------------------------------------------
    @app_commands.command(
        name="songusage", description="How much /song you (and, for moderators, the server) used today."
    )
    @app_commands.guild_only()
    async def songusage(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            await self._reply(interaction, "Use this command in a server.")
            return
        policy = self.services.policy
        mine = await policy.member_usage(interaction.guild_id, interaction.user.id)
        server = await policy.server_usage(interaction.guild_id) if is_manager(interaction) else None
        everywhere = None
        if server is not None and (
            interaction.guild_id == self.services.settings.dev_guild_id or await self.bot.is_owner(interaction.user)
        ):
            everywhere = await policy.global_usage()  # the operator's own server: what DashScope billed, everywhere
        await self._reply(interaction, embed=usage_embed(mine, server, everywhere))

    # --- /songhistory --------------------------------------------------------------------------------------------
    @app_commands.command(name="songhistory", description="Your recent songs, with links to them.")
    async def songhistory(self, interaction: discord.Interaction) -> None:
        jobs = await self.services.store.history(interaction.user.id, interaction.guild_id, HISTORY_SONGS)
        if not jobs:
            await self._reply(interaction, "You have no songs yet. Make one with /song!")
            return
        await self._reply(interaction, embed=history_embed(jobs, self.services.clock.now()))

    # --- /songdata -----------------------------------------------------------------------------------------------
    songdata = app_commands.Group(name="songdata", description="Your data stored by /song")

    @songdata.command(name="delete", description="Erase your stored prompts, lyrics and song history.")
    async def songdata_delete(self, interaction: discord.Interaction) -> None:
        erased = await self.services.store.delete_member_data(interaction.user.id)
        await self._reply(
            interaction,
            f"Erased your stored prompts, lyrics and history ({plural(erased, 'song record')}). Usage counts stay, "
            "without "
            "your prompts, so today's quotas still hold.",
        )


async def setup(bot: SongBot) -> None:
    await bot.add_cog(ConfigCog(bot))
