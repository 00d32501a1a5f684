"""Discord's documented object shapes, built without discord.py, for the offline Discord.

Everything here is plain data: snowflakes, the guild/channel/role/user model the fake serves over the gateway,
and the INTERACTION_CREATE payloads a test sends (slash commands, button clicks, modal submits). The shapes
follow discord-api-docs (`resources/*.mdx`, `interactions/receiving-and-responding.mdx`) and what discord.py 2.7
reads (`discord/types/*.py`); docs/offline.md says how faithful they are.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000
MiB = 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 10 * MiB
"""Per-attachment limit without boosts or Nitro since 2025-01-16 (discord-api-docs change-log)."""

Json = dict[str, Any]


class Perm(enum.IntFlag):
    """The permission bits songbot cares about (discord-api-docs `topics/permissions.mdx`)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


MEMBER_PERMISSIONS = (
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.ADD_REACTIONS
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.SEND_MESSAGES_IN_THREADS
    | Perm.CREATE_INSTANT_INVITE
)
"""What an ordinary member may do in an ordinary channel (the @everyone role of a new server)."""

MODERATOR_PERMISSIONS = MEMBER_PERMISSIONS | Perm.MANAGE_GUILD | Perm.MANAGE_MESSAGES
BOT_PERMISSIONS = (
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.SEND_MESSAGES_IN_THREADS
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.USE_EXTERNAL_EMOJIS
)
"""The bot's permissions where nothing was denied: what songbot's invite asks for."""

PREMIUM_TIER_UPLOAD = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}
"""discord.py's `Guild.filesize_limit` table (no official Discord table exists)."""


class ChannelType(enum.IntEnum):
    GUILD_TEXT = 0
    DM = 1
    GUILD_VOICE = 2
    PUBLIC_THREAD = 11
    PRIVATE_THREAD = 12


THREAD_TYPES = frozenset({10, ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD})


class InteractionType(enum.IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class OptionType(enum.IntEnum):
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


# --- snowflakes -------------------------------------------------------------------------------------------------


def time_snowflake(at: datetime, *, low_bits: int = 0) -> int:
    """The snowflake for `at`, like `discord.utils.time_snowflake(at)` plus optional worker/increment bits."""
    ms = int(at.timestamp() * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (low_bits & 0x3FFFFF)


def snowflake_seconds(snowflake: int) -> float:
    """Unix time (seconds) at which `snowflake` was made."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000.0


class Snowflakes:
    """Unique snowflakes whose timestamp is `now()` (or a given time): the low 22 bits are a counter."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._counter = itertools.count(1)

    def __call__(self, at: datetime | None = None) -> int:
        when = at if at is not None else datetime.fromtimestamp(self._now(), UTC)
        return time_snowflake(when, low_bits=next(self._counter))


def iso(seconds: float) -> str:
    """Discord's ISO 8601 timestamp for a Unix time."""
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# --- the world: users, roles, channels, guilds ------------------------------------------------------------------


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_json(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def to_json(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(int(self.permissions)),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class FakeChannel:
    """A text channel, thread or DM. `bot_permissions` are the bot's effective permissions here: the fake
    enforces them on bot-token posts (403/50013) and puts them in interactions as `app_permissions`."""

    id: int
    name: str
    type: int = ChannelType.GUILD_TEXT
    guild_id: int | None = None
    position: int = 0
    parent_id: int | None = None
    bot_permissions: int = BOT_PERMISSIONS
    upload_limit: int | None = None
    recipients: list[FakeUser] = field(default_factory=list)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_dm(self) -> bool:
        return self.type == ChannelType.DM

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def overwrites(self, bot_id: int, bot_role_permissions: int) -> list[Json]:
        """A member overwrite for the bot that turns its role permissions into `bot_permissions`, so
        discord.py's own `channel.permissions_for(guild.me)` agrees with what the fake enforces."""
        allow = int(self.bot_permissions) & ~int(bot_role_permissions)
        deny = int(bot_role_permissions) & ~int(self.bot_permissions)
        if not allow and not deny:
            return []
        return [{"id": str(bot_id), "type": 1, "allow": str(allow), "deny": str(deny)}]

    def to_json(self, *, bot_id: int = 0, bot_role_permissions: int = BOT_PERMISSIONS) -> Json:
        if self.is_dm:
            return {
                "id": str(self.id),
                "type": int(self.type),
                "last_message_id": None,
                "flags": 0,
                "recipients": [user.to_json() for user in self.recipients],
            }
        data: Json = {
            "id": str(self.id),
            "type": int(self.type),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "permission_overwrites": self.overwrites(bot_id, bot_role_permissions),
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }
        if self.is_thread:
            data["thread_metadata"] = {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso(snowflake_seconds(self.id)),
                "locked": False,
            }
            data["owner_id"] = str(bot_id)
            data["member_count"] = 1
            data["message_count"] = 0
        return data


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    premium_tier: int = 0
    locale: str = "en-US"
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    member_count: int = 2
    snowflakes: Callable[[], int] | None = field(default=None, repr=False)

    @property
    def everyone(self) -> FakeRole:
        return next(role for role in self.roles if role.id == self.id)

    @property
    def bot_role(self) -> FakeRole | None:
        return next((role for role in self.roles if role.bot_id is not None), None)

    @property
    def upload_limit(self) -> int:
        return PREMIUM_TIER_UPLOAD.get(self.premium_tier, DEFAULT_UPLOAD_LIMIT)

    def channel(self, name: str) -> FakeChannel:
        return next(channel for channel in self.channels if channel.name == name)

    def _new_id(self) -> int:
        if self.snowflakes is None:
            raise RuntimeError("this guild was not made by FakeDiscord.add_guild")
        return self.snowflakes()

    def add_channel(
        self,
        name: str,
        *,
        type: int = ChannelType.GUILD_TEXT,
        bot_permissions: int = BOT_PERMISSIONS,
        upload_limit: int | None = None,
        parent: FakeChannel | None = None,
    ) -> FakeChannel:
        channel = FakeChannel(
            id=self._new_id(),
            name=name,
            type=type,
            guild_id=self.id,
            position=len(self.channels),
            parent_id=parent.id if parent else None,
            bot_permissions=bot_permissions,
            upload_limit=upload_limit,
        )
        self.channels.append(channel)
        return channel

    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        role = FakeRole(id=self._new_id(), name=name, permissions=permissions, position=len(self.roles))
        self.roles.append(role)
        return role

    def to_json(self, bot: FakeUser, *, joined_at: float) -> Json:
        """The full GUILD_CREATE payload (no privileged intents: only the bot's own member)."""
        bot_role = self.bot_role
        role_perms = int(bot_role.permissions) if bot_role else int(self.everyone.permissions)
        bot_member = {
            "user": bot.to_json(),
            "roles": [str(bot_role.id)] if bot_role else [],
            "joined_at": iso(joined_at),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "application_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "features": list(self.features),
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "large": False,
            "unavailable": False,
            "joined_at": iso(joined_at),
            "member_count": self.member_count,
            "roles": [role.to_json() for role in self.roles],
            "emojis": [],
            "stickers": [],
            "channels": [
                channel.to_json(bot_id=bot.id, bot_role_permissions=role_perms)
                for channel in self.channels
                if not channel.is_thread
            ],
            "threads": [
                channel.to_json(bot_id=bot.id, bot_role_permissions=role_perms)
                for channel in self.channels
                if channel.is_thread
            ],
            "members": [bot_member],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(frozen=True)
class UploadedFile:
    """A user-uploaded attachment (slash option of type 11), served by the fake at `url`."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str

    def to_json(self) -> Json:
        data: Json = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "ephemeral": True,
        }
        if self.content_type is not None:
            data["content_type"] = self.content_type
        return data


# --- interaction payloads ---------------------------------------------------------------------------------------


def member_json(user: FakeUser, *, roles: Iterable[int], permissions: int, joined_at: float) -> Json:
    return {
        "user": user.to_json(),
        "roles": [str(role) for role in roles],
        "joined_at": iso(joined_at),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "nick": None,
        "avatar": None,
        "premium_since": None,
        "communication_disabled_until": None,
        "permissions": str(int(permissions)),
    }


def option_json(name: str, value: Any, resolved: Json) -> Json:
    """One command option; the type follows the Python value, and objects go into `resolved`."""
    if isinstance(value, Mapping):
        return {"name": name, **value}
    if isinstance(value, bool):
        return {"name": name, "type": OptionType.BOOLEAN, "value": value}
    if isinstance(value, int):
        return {"name": name, "type": OptionType.INTEGER, "value": value}
    if isinstance(value, float):
        return {"name": name, "type": OptionType.NUMBER, "value": value}
    if isinstance(value, str):
        return {"name": name, "type": OptionType.STRING, "value": value}
    if isinstance(value, UploadedFile):
        resolved.setdefault("attachments", {})[str(value.id)] = value.to_json()
        return {"name": name, "type": OptionType.ATTACHMENT, "value": str(value.id)}
    if isinstance(value, FakeUser):
        resolved.setdefault("users", {})[str(value.id)] = value.to_json()
        return {"name": name, "type": OptionType.USER, "value": str(value.id)}
    if isinstance(value, FakeRole):
        resolved.setdefault("roles", {})[str(value.id)] = value.to_json()
        return {"name": name, "type": OptionType.ROLE, "value": str(value.id)}
    if isinstance(value, FakeChannel):
        channel = {key: val for key, val in value.to_json().items() if key in ("id", "type", "name", "parent_id")}
        resolved.setdefault("channels", {})[str(value.id)] = {**channel, "permissions": str(MEMBER_PERMISSIONS)}
        return {"name": name, "type": OptionType.CHANNEL, "value": str(value.id)}
    raise TypeError(f"no Discord option type for {type(value).__name__}")


def command_data(
    command_id: int,
    name: str,
    options: Mapping[str, Any] | Sequence[Json] | None,
    *,
    guild_id: int | None,
) -> Json:
    """`data` of a CHAT_INPUT interaction. `name` may be "cmd", "cmd sub" or "cmd group sub"; `options` go to
    the innermost level: a mapping of name -> value (typed by `option_json`) or ready-made option objects."""
    root, *path = name.split()
    if len(path) > 2:
        raise ValueError(f"a command name has at most 3 words: {name!r}")
    resolved: Json = {}
    if options is None:
        leaf: list[Json] = []
    elif isinstance(options, Mapping):
        leaf = [option_json(key, value, resolved) for key, value in options.items()]
    else:
        leaf = [dict(option) for option in options]
    for depth, part in reversed(list(enumerate(path))):
        kind = OptionType.SUB_COMMAND if depth == len(path) - 1 else OptionType.SUB_COMMAND_GROUP
        leaf = [{"name": part, "type": kind, "options": leaf}]
    data: Json = {"id": str(command_id), "name": root, "type": 1, "options": leaf}
    if resolved:
        data["resolved"] = resolved
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    return data


def modal_components(values: Mapping[str, str], *, form: str = "label") -> list[Json]:
    """Submitted modal fields. `form="label"`: each TextInput wrapped in a Label (type 18, discord.py 2.6+);
    `form="row"`: the older ActionRow (type 1) wrapping."""
    components: list[Json] = []
    for number, (custom_id, value) in enumerate(values.items()):
        text_input = {"type": 4, "id": 2 * number + 2, "custom_id": custom_id, "value": value}
        if form == "label":
            components.append({"type": 18, "id": 2 * number + 1, "component": text_input})
        elif form == "row":
            components.append({"type": 1, "id": 2 * number + 1, "components": [text_input]})
        else:
            raise ValueError(f"form is 'label' or 'row', not {form!r}")
    return components


def modal_inputs(modal: Json) -> list[tuple[str, str | None, int]]:
    """(custom_id, label, wrapper type) of each text input in a modal the bot sent (callback type 9)."""
    found: list[tuple[str, str | None, int]] = []
    for top in modal.get("components", []):
        if top.get("type") == 18:
            inner = top.get("component", {})
            if inner.get("type") == 4:
                found.append((inner["custom_id"], top.get("label"), 18))
        elif top.get("type") == 1:
            for inner in top.get("components", []):
                if inner.get("type") == 4:
                    found.append((inner["custom_id"], inner.get("label"), 1))
    return found


class TokenFactory:
    """Interaction tokens: long opaque strings, deterministic per fake (no OS randomness on the loop)."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def __call__(self) -> str:
        return f"aW50ZXJhY3Rpb246{self._random.getrandbits(256):064x}"
