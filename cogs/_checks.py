"""Checks the cogs share: who the member is to the bot (a manager, their roles) and what the bot may do where the
interaction came from."""

from __future__ import annotations

import discord

#: What the bot needs in a channel to post a song after the interaction token expires (and to post at all).
REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    attach_files=True,
    embed_links=True,
)


def is_manager(interaction: discord.Interaction) -> bool:
    """Manage Server (or Administrator) in the interaction's server; nobody manages anything in DMs."""
    perms = interaction.permissions
    return interaction.guild_id is not None and bool(perms.manage_guild or perms.administrator)


def can_post_later(interaction: discord.Interaction) -> bool:
    """Could the bot post the song with its own token once the interaction token expires (after 15 minutes)?
    :data:`REQUIRED_PERMISSIONS`, of which only the send permission of this kind of channel (thread or not)."""
    in_thread = isinstance(interaction.channel, discord.Thread)
    needed = discord.Permissions(REQUIRED_PERMISSIONS.value)
    if in_thread:
        needed.send_messages = False
    else:
        needed.send_messages_in_threads = False
    return interaction.app_permissions >= needed


def member_role_ids(user: discord.User | discord.Member) -> list[int]:
    """The role ids from the interaction's member payload: the source of truth, even for roles the guild cache
    has not seen yet (``Member.roles`` silently drops those)."""
    raw = getattr(user, "_roles", None)
    if raw is not None:
        return [int(role_id) for role_id in raw]
    return [role.id for role in getattr(user, "roles", [])]
