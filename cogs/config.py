"""Moderator and member commands around /song: /songconfig, /songusage, /songhistory, /songdata.

Discord's ``default_permissions`` only hides commands in the client, and moderators can change it, so every
moderator action is checked again here from the member's permissions in the interaction payload.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from cogs._words import NO_PINGS, clip, format_duration, global_usage_text, relative
from cogs.song import is_manager
from services.errors import InvalidInput
from services.guild_settings import SETTINGS, GuildSettings

if TYPE_CHECKING:
    from bot import SongBot

log = logging.getLogger(__name__)

NOT_A_MODERATOR = "Only members with the Manage Server permission can change /song's settings."


def describe_change(before: GuildSettings, after: GuildSettings) -> str:
    """``cooldown: 60 seconds → 30 seconds`` lines for every setting that changed."""
    lines = []
    for spec in SETTINGS:
        old, new = getattr(before, spec.name), getattr(after, spec.name)
        if old != new:
            lines.append(f"**{spec.name}**: {spec.format(old)} → {spec.format(new)}")
    return "\n".join(lines) or "Nothing changed."


def settings_embed(settings: GuildSettings, guild_name: str) -> discord.Embed:
    embed = discord.Embed(title=f"/song settings for {clip(guild_name, 200)}", colour=discord.Colour.blurple())
    for spec, value, is_default in settings.rows():
        state = "default" if is_default else f"default {spec.format(spec.default)}"
        embed.add_field(
            name=spec.name,
            value=clip(f"**{spec.format(value)}** ({state})\n{spec.description}\nAllowed: {spec.allowed}", 1024),
            inline=False,
        )
    embed.set_footer(text="Members with Manage Server are exempt from role limits.")
    return embed


class ConfigCog(commands.Cog):
    def __init__(self, bot: SongBot) -> None:
        self.bot = bot

    @property
    def services(self) -> Any:
        return self.bot.services

    async def _reply(self, interaction: discord.Interaction, text: str | None = None, **kwargs: Any) -> None:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS, **kwargs)

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
        cooldown="Seconds a member waits between songs (0–86400)",
        member_daily_songs="Songs each member can make per UTC day (0–1000)",
        server_daily_songs="Songs the server can make per UTC day (0–100000)",
        server_daily_minutes="Minutes of music the server can make per UTC day (0–100000)",
        max_concurrent="Songs this server can have generating at once (1–20)",
        max_queued="Songs this server can have waiting in the queue at once (1–1000)",
        default_voice="Voice when a member doesn't choose",
        default_format="Format when a member doesn't choose",
        watermark="Audible AI watermark: always, never, or the member's choice",
        private_allowed="Whether members may ask for private results",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        enabled: bool | None = None,
        cooldown: int | None = None,
        member_daily_songs: int | None = None,
        server_daily_songs: int | None = None,
        server_daily_minutes: int | None = None,
        max_concurrent: int | None = None,
        max_queued: int | None = None,
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
            await self._reply(interaction, exc.user_message)
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
            await self._reply(interaction, exc.user_message)
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
        embed = discord.Embed(title="/song usage today (UTC)", colour=discord.Colour.blurple())
        embed.add_field(
            name="You",
            value=f"{mine.songs_used} of {mine.songs_limit} song(s), {format_duration(mine.seconds_used)} of music; "
            f"{mine.songs_left} song(s) left today.",
            inline=False,
        )
        if is_manager(interaction):
            server = await policy.server_usage(interaction.guild_id)
            embed.add_field(
                name="This server",
                value=f"{server.songs_used}/{server.songs_limit} songs, "
                f"{server.seconds_used / 60:.1f}/{server.seconds_limit / 60:.0f} minutes of music.",
                inline=False,
            )
            if server.top:
                top = "\n".join(
                    f"{f'<@{row.user_id}>' if row.user_id else '(deleted member)'}: {row.songs} song(s), "
                    f"{format_duration(row.seconds)}"
                    for row in server.top
                )
                embed.add_field(name="Top members", value=top, inline=False)
            if interaction.guild_id == self.services.settings.dev_guild_id or await self.bot.is_owner(interaction.user):
                # the operator's own server: what DashScope billed across all servers, beside what was delivered
                everywhere = await policy.global_usage()
                embed.add_field(name="All servers (operator)", value=global_usage_text(everywhere), inline=False)
        embed.set_footer(text="Quotas reset at 00:00 UTC.")
        embed.add_field(name="Resets", value=relative(mine.resets_at.timestamp()), inline=False)
        await self._reply(interaction, embed=embed)

    # --- /songhistory --------------------------------------------------------------------------------------------
    @app_commands.command(name="songhistory", description="Your recent songs, with links to them.")
    async def songhistory(self, interaction: discord.Interaction) -> None:
        jobs = await self.services.store.history(interaction.user.id, interaction.guild_id, 10)
        if not jobs:
            await self._reply(interaction, "You have no songs yet. Make one with /song!")
            return
        now = self.services.clock.now()
        lines = []
        for job in jobs:
            title = clip(str(job.options.get("title") or job.prompt or "song"), 60)
            line = f"**{discord.utils.escape_markdown(title)}** · {job.status} · {relative(job.created_at.timestamp())}"
            jump = job.jump_url()
            if jump:
                line += f" · [message]({jump})"
            url = job.url_if_valid(now)
            if url and job.url_expires_at:
                line += f" · [download]({url}) (expires {relative(job.url_expires_at.timestamp())})"
            lines.append(line)
        embed = discord.Embed(title="Your recent songs", description="\n".join(lines), colour=discord.Colour.blurple())
        await self._reply(interaction, embed=embed)

    # --- /songdata -----------------------------------------------------------------------------------------------
    songdata = app_commands.Group(name="songdata", description="Your data stored by /song")

    @songdata.command(name="delete", description="Erase your stored prompts, lyrics and song history.")
    async def songdata_delete(self, interaction: discord.Interaction) -> None:
        erased = await self.services.store.delete_member_data(interaction.user.id)
        await self._reply(
            interaction,
            f"Erased your stored prompts, lyrics and history ({erased} song record(s)). Usage counts stay, without "
            "your prompts, so today's quotas still hold.",
        )


async def setup(bot: SongBot) -> None:
    await bot.add_cog(ConfigCog(bot))
