"""The REST half of the offline Discord: recording, the message store, Discord's rules, fault injection.

All requests under `/api/v10` land in one catch-all handler (`RestApi.handle`) that records them, applies
injected faults and rate-limit buckets, checks the bot token where Discord needs it, and then routes to a
handler. Handlers raise `DiscordError` for Discord's documented errors (`{"message", "code"}` JSON).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from services.offline.payloads import (
    DEFAULT_UPLOAD_LIMIT,
    FakeChannel,
    FakeGuild,
    FakeUser,
    Json,
    Perm,
    Snowflakes,
    TokenFactory,
    iso,
    member_json,
)

JSON_TYPE = "application/json"
"""discord.py compares the Content-Type string exactly: no `; charset=utf-8` (notes section 10)."""

EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
EDITABLE_FLAGS = SUPPRESS_EMBEDS | COMPONENTS_V2
CREATABLE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)\b")

AUDIO_AND_TEXT_TYPES = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "txt": "text/plain; charset=utf-8",
    "lrc": "text/plain; charset=utf-8",
    "json": "application/json; charset=utf-8",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}
"""Discord infers an attachment's media type from its name (discord.py uploads everything as octet-stream)."""


def media_type(filename: str, uploaded_as: str | None) -> str | None:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension in AUDIO_AND_TEXT_TYPES:
        return AUDIO_AND_TEXT_TYPES[extension]
    if uploaded_as and uploaded_as != "application/octet-stream":
        return uploaded_as
    return None


# --- errors -----------------------------------------------------------------------------------------------------


class DiscordError(Exception):
    """A documented Discord error answer: HTTP status plus `{"message", "code"}` (and `errors` for 50035)."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> Json:
        data: Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def form_error(path: str, code: str, message: str) -> DiscordError:
    """400/50035 with Discord's nested `errors` object, e.g. path "data.embeds.0.description"."""
    errors: Json = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


def too_long(path: str, limit: int) -> DiscordError:
    return form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def invalid_webhook_token() -> DiscordError:
    return DiscordError(401, 50027, "Invalid Webhook Token")


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


# --- records ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedFile:
    """One uploaded multipart file part: the form field (`files[0]`), its file name, bytes and Content-Type."""

    field: str
    filename: str
    data: bytes
    content_type: str | None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Recorded:
    """One request the fake received. `path` is relative to `/api/v10`. `headers` never hold the
    Authorization value: `auth` is only its scheme ("Bot") or None when absent."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    auth: str | None
    json: Any
    files: list[RecordedFile]
    at: float
    status: int = 0
    response: Any = None
    dropped: bool = False  # the connection was cut mid-upload (drop_next): no status, no answer

    @property
    def code(self) -> int | None:
        """Discord's error code of the answer, if it was an error."""
        if isinstance(self.response, dict) and self.status >= 400:
            code = self.response.get("code")
            return int(code) if code is not None else None
        return None


@dataclass
class StoredAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    uploaded_as: str | None
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self, *, ephemeral: bool) -> Json:
        data: Json = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url.replace("/attachments/", "/media/attachments/", 1),
        }
        if self.content_type is not None:
            data["content_type"] = self.content_type
        if self.description is not None:
            data["description"] = self.description
        if ephemeral:
            data["ephemeral"] = True
        return data


@dataclass(frozen=True)
class Pings:
    """Whom a message actually notifies, after Discord applies `allowed_mentions`."""

    everyone: bool
    users: frozenset[int]
    roles: frozenset[int]

    @property
    def anyone(self) -> bool:
        return self.everyone or bool(self.users) or bool(self.roles)


def walk_components(components: list[Json]) -> Iterator[Json]:
    """Every component, depth first, through rows, containers, sections, labels and accessories."""
    for component in components:
        yield component
        yield from walk_components(component.get("components", []))
        for key in ("component", "accessory"):
            inner = component.get(key)
            if isinstance(inner, dict):
                yield from walk_components([inner])


def embed_text_length(embed: Json) -> int:
    """Characters counted against the 6000 total (discord-api-docs `resources/message.mdx`)."""
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for item in embed.get("fields") or []:
        total += len(item.get("name") or "") + len(item.get("value") or "")
    return total


@dataclass
class StoredMessage:
    """A message as members see it. Each change keeps a snapshot in `history`; `at` is when (monotonic)."""

    id: int
    channel_id: int
    author: FakeUser
    created: float
    at: float
    type: int = 0
    content: str = ""
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    flags: int = 0
    attachments: list[StoredAttachment] = field(default_factory=list)
    allowed_mentions: Json | None = None
    message_reference: Json | None = None
    webhook_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: Json | None = None
    edited: float | None = None
    deleted: bool = False
    visible_to: int | None = None
    history: list[StoredMessage] = field(default_factory=list, repr=False)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Still the "<bot> is thinking…" message of a deferred response."""
        return bool(self.flags & LOADING)

    @property
    def components_v2(self) -> bool:
        return bool(self.flags & COMPONENTS_V2)

    def attachment(self, filename: str) -> StoredAttachment:
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(f"no attachment {filename!r} on message {self.id}: {[a.filename for a in self.attachments]}")

    def all_components(self) -> list[Json]:
        return list(walk_components(self.components))

    def buttons(self) -> list[Json]:
        return [component for component in self.all_components() if component.get("type") == 2]

    def component(self, custom_id: str) -> Json:
        for component in self.all_components():
            if component.get("custom_id") == custom_id:
                return component
        raise KeyError(f"no component {custom_id!r} on message {self.id}")

    def text(self) -> str:
        """All text a member reads: content, embed texts and Components v2 text displays, one per line."""
        parts = [self.content]
        for embed in self.embeds:
            parts += [embed.get("title") or "", embed.get("description") or ""]
            parts += [f"{item.get('name', '')}\n{item.get('value', '')}" for item in embed.get("fields") or []]
            parts.append((embed.get("footer") or {}).get("text") or "")
        parts += [c.get("content", "") for c in self.all_components() if c.get("type") == 10]
        return "\n".join(part for part in parts if part)

    def visible_attachments(self) -> list[StoredAttachment]:
        """With Components v2, attachments not referenced by a File/Thumbnail/MediaGallery are hidden."""
        if not self.components_v2:
            return list(self.attachments)
        referenced: set[str] = set()
        for component in self.all_components():
            urls = [(component.get("file") or {}).get("url"), (component.get("media") or {}).get("url")]
            urls += [(item.get("media") or {}).get("url") for item in component.get("items") or []]
            referenced.update(url.removeprefix("attachment://") for url in urls if isinstance(url, str))
        return [attachment for attachment in self.attachments if attachment.filename in referenced]

    def pings(self) -> Pings:
        """Apply `allowed_mentions` to the mentions in content (and v2 text displays) as Discord does:
        no `allowed_mentions` means everything in the text pings."""
        texts = [self.content] + [c.get("content", "") for c in self.all_components() if c.get("type") == 10]
        text = "\n".join(texts)
        users = {int(match) for match in USER_MENTION.findall(text)}
        roles = {int(match) for match in ROLE_MENTION.findall(text)}
        everyone = bool(EVERYONE_MENTION.search(text))
        allowed = self.allowed_mentions
        if allowed is None:
            return Pings(everyone, frozenset(users), frozenset(roles))
        parse = set(allowed.get("parse") or [])
        allowed_users = {int(user) for user in allowed.get("users") or []}
        allowed_roles = {int(role) for role in allowed.get("roles") or []}
        return Pings(
            everyone=everyone and "everyone" in parse,
            users=frozenset(users if "users" in parse else users & allowed_users),
            roles=frozenset(roles if "roles" in parse else roles & allowed_roles),
        )

    def snapshot(self) -> StoredMessage:
        clone = copy.copy(self)
        clone.embeds = copy.deepcopy(self.embeds)
        clone.components = copy.deepcopy(self.components)
        clone.attachments = list(self.attachments)
        clone.history = []
        return clone

    def to_json(self, users: dict[int, FakeUser]) -> Json:
        pings = self.pings()
        data: Json = {
            "id": str(self.id),
            "type": self.type,
            "content": self.content,
            "channel_id": str(self.channel_id),
            "author": self.author.to_json(),
            "attachments": [attachment.to_json(ephemeral=self.ephemeral) for attachment in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "flags": self.flags,
            "timestamp": iso(self.created),
            "edited_timestamp": iso(self.edited) if self.edited is not None else None,
            "tts": False,
            "pinned": False,
            "mention_everyone": pings.everyone,
            "mentions": [
                (users[uid] if uid in users else FakeUser(id=uid, username=f"user{uid}")).to_json()
                for uid in sorted(pings.users)
            ],
            "mention_roles": [str(rid) for rid in sorted(pings.roles)],
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data


@dataclass(frozen=True)
class Callback:
    """An accepted interaction callback. `age` is seconds since the interaction was created (fake's clock)."""

    type: int
    data: Json
    files: list[RecordedFile]
    at: float
    age: float


@dataclass
class InteractionRecord:
    id: int
    token: str
    type: int
    payload: Json
    created: float
    size_limit: int
    channel_id: int
    guild_id: int | None
    user_id: int
    source_message_id: int | None = None
    age_offset: float = 0.0
    callback: Callback | None = None
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: Json | None = None

    def age(self, now: float) -> float:
        return now - self.created + self.age_offset


@dataclass
class CommandSync:
    guild_id: int | None
    commands: list[Json]
    at: float


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None
    code: int
    message: str
    remaining: int | None
    retry_after: float
    is_global: bool
    via: bool
    delay: float
    hits: int = 0
    drop: bool = False  # close the connection mid-upload, after the first bytes of the body, with no answer

    def matches(self, method: str, path: str) -> bool:
        live = self.remaining is None or self.remaining > 0
        return live and self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass
class Bucket:
    """A fixed-window rate limit per concrete path: `limit` requests per `per` seconds, then 429."""

    method: str
    pattern: re.Pattern[str]
    limit: int
    per: float
    announce: bool
    name: str
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)
    limited: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.pattern.search(path) is not None

    def take(self, key: str, now: float) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until the window resets)."""
        start, count = self.windows.get(key, (now, 0))
        if now >= start + self.per:
            start, count = now, 0
        if count >= self.limit:
            self.limited += 1
            return False, 0, start + self.per - now
        self.windows[key] = (start, count + 1)
        return True, self.limit - count - 1, start + self.per - now


@dataclass
class Rules:
    """Discord's rules as the fake enforces them; set a limit to None to switch a time rule off."""

    callback_deadline: float | None = 3.0
    token_lifetime: float | None = 15 * 60.0
    max_content: int = 2000
    max_embeds: int = 10
    max_embed_description: int = 4096
    max_embed_total: int = 6000
    max_attachments: int = 10
    max_components_v2: int = 40
    max_custom_id: int = 100
    default_upload_limit: int = DEFAULT_UPLOAD_LIMIT
    check_permissions: bool = True
    reject_empty: bool = True


Reply = tuple[int, Any, dict[str, str]]
Handler = Callable[["Call"], Awaitable[Reply]]


@dataclass
class Call:
    rec: Recorded
    args: tuple[str, ...]
    request: web.Request


def ok(data: Any, status: int = 200) -> Reply:
    return status, data, {}


def no_content() -> Reply:
    return 204, None, {}


def rate_limited_reply(
    retry_after: float, *, limit: int, bucket: str, is_global: bool = False, via: bool = True
) -> Reply:
    """A 429 as Discord sends it. discord.py only waits and retries when `Via` is present; without it the
    429 looks like a Cloudflare ban and raises at once (discord/http.py, webhook/async_.py)."""
    headers = {
        "Retry-After": str(max(1, math.ceil(retry_after))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Scope": "shared" if not is_global else "global",
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    if via:
        headers["Via"] = "1.1 google"
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global, "code": 0}
    return 429, body, headers


# --- shared state -----------------------------------------------------------------------------------------------


class DiscordState:
    """Everything both halves of the fake share: the world (guilds, users), stores, rules and records."""

    def __init__(self, *, clock: Callable[[], float], token: str | None, seed: int = 0) -> None:
        self.clock = clock
        self.token = token
        self.snowflakes = Snowflakes(clock)
        self.tokens = TokenFactory(seed)
        self.rules = Rules()
        self.application_id = self.snowflakes()
        self.bot = FakeUser(id=self.application_id, username="songbot", bot=True)
        self.owner = FakeUser(id=self.snowflakes(), username="operator")
        self.users: dict[int, FakeUser] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.other_channels: dict[int, FakeChannel] = {}
        self.closed_dms: set[int] = set()
        self.messages: dict[int, StoredMessage] = {}
        self.channel_order: dict[int, list[int]] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.by_token: dict[str, InteractionRecord] = {}
        self.blobs: dict[int, tuple[str, bytes, str | None]] = {}
        self.commands: dict[int | None, list[Json]] = {}
        self.command_syncs: list[CommandSync] = []
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.buckets: list[Bucket] = []
        self.base_url = ""
        self.started = time.time()
        self.internal_errors: list[Exception] = []
        self._changed: asyncio.Condition | None = None

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    def condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def touch(self) -> None:
        """Wake everyone in `FakeDiscord.wait_until`."""
        changed = self.condition()
        async with changed:
            changed.notify_all()

    def channel(self, channel_id: int) -> FakeChannel | None:
        for guild in self.guilds.values():
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        for channel in self.dm_channels.values():
            if channel.id == channel_id:
                return channel
        return self.other_channels.get(channel_id)

    def guild_of(self, channel: FakeChannel) -> FakeGuild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id is not None else None

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(id=self.snowflakes(), name="", type=1, recipients=[user])
            self.dm_channels[user.id] = channel
        return channel

    def upload_limit(self, channel: FakeChannel) -> int:
        if channel.upload_limit is not None:
            return channel.upload_limit
        guild = self.guild_of(channel)
        return guild.upload_limit if guild is not None else self.rules.default_upload_limit

    def attachment_url(self, channel_id: int, attachment_id: int, filename: str) -> str:
        expires = int(time.time()) + 24 * 3600
        return f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}?ex={expires:x}&is={expires:x}"

    def add_message(self, message: StoredMessage) -> StoredMessage:
        """Store a new message (validated by `apply_body`) with its first snapshot."""
        self.messages[message.id] = message
        self.channel_order.setdefault(message.channel_id, []).append(message.id)
        message.at = time.monotonic()
        for attachment in message.attachments:
            self.blobs[attachment.id] = (attachment.filename, attachment.data, attachment.content_type)
        message.history = [message.snapshot()]
        return message

    def interaction_for(self, application_id: str, token: str) -> InteractionRecord:
        """The interaction behind a webhook url, enforcing the token's lifetime (401/50027)."""
        if int(application_id) != self.application_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        record = self.by_token.get(token)
        if record is None:
            raise invalid_webhook_token()
        lifetime = self.rules.token_lifetime
        if lifetime is not None and record.age(self.clock()) > lifetime:
            raise invalid_webhook_token()
        if record.callback is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        return record


# --- message bodies: validation and application -----------------------------------------------------------------


def check_components(components: list[Json], flags: int, rules: Rules, where: str) -> None:
    everything = list(walk_components(components))
    if flags & COMPONENTS_V2:
        if len(everything) > rules.max_components_v2:
            raise form_error(
                f"{where}components", "BASE_TYPE_MAX_LENGTH", f"Must be {rules.max_components_v2} or fewer."
            )
    else:
        if len(components) > 5:
            raise too_long(f"{where}components", 5)
        for index, row in enumerate(components):
            if row.get("type") != 1:
                raise form_error(f"{where}components.{index}.type", "UNION_TYPE_CHOICES", "Value must be one of {1}.")
            if len(row.get("components", [])) > 5:
                raise too_long(f"{where}components.{index}.components", 5)
    seen: set[str] = set()
    for component in everything:
        if component.get("type") == 2 and len(component.get("label") or "") > 80:
            raise too_long(f"{where}components.label", 80)
        custom_id = component.get("custom_id")
        if custom_id is None:
            continue
        if not 1 <= len(custom_id) <= rules.max_custom_id:
            raise too_long(f"{where}components.custom_id", rules.max_custom_id)
        if custom_id in seen:
            raise form_error(
                f"{where}components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
            )
        seen.add(custom_id)


def check_embeds(embeds: list[Json], rules: Rules, where: str) -> None:
    if len(embeds) > rules.max_embeds:
        raise too_long(f"{where}embeds", rules.max_embeds)
    for index, embed in enumerate(embeds):
        if len(embed.get("title") or "") > 256:
            raise too_long(f"{where}embeds.{index}.title", 256)
        if len(embed.get("description") or "") > rules.max_embed_description:
            raise too_long(f"{where}embeds.{index}.description", rules.max_embed_description)
        if len((embed.get("footer") or {}).get("text") or "") > 2048:
            raise too_long(f"{where}embeds.{index}.footer.text", 2048)
        if len((embed.get("author") or {}).get("name") or "") > 256:
            raise too_long(f"{where}embeds.{index}.author.name", 256)
        if len(embed.get("fields") or []) > 25:
            raise too_long(f"{where}embeds.{index}.fields", 25)
        for number, item in enumerate(embed.get("fields") or []):
            if len(item.get("name") or "") > 256:
                raise too_long(f"{where}embeds.{index}.fields.{number}.name", 256)
            if len(item.get("value") or "") > 1024:
                raise too_long(f"{where}embeds.{index}.fields.{number}.value", 1024)
    if sum(embed_text_length(embed) for embed in embeds) > rules.max_embed_total:
        raise form_error(
            f"{where}embeds", "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {rules.max_embed_total}"
        )


def check_sizes(files: list[RecordedFile], limit: int) -> None:
    """413/40005 when any single file is above the limit (checked per attachment since 2025-04-03)."""
    if any(upload.size > limit for upload in files):
        raise DiscordError(413, 40005, "Request entity too large")


def apply_body(
    state: DiscordState,
    message: StoredMessage,
    body: Json,
    files: list[RecordedFile],
    *,
    creating: bool,
    limit: int,
    where: str = "",
) -> StoredMessage:
    """Validate a create/edit body against Discord's rules and return the message as it would be after it.
    The store is changed only by the caller (after every check passed)."""
    rules = state.rules
    check_sizes(files, limit)
    after = message.snapshot()
    if "content" in body or creating:
        content = body.get("content")
        after.content = "" if content is None else str(content)
    if "embeds" in body or creating:
        after.embeds = list(body.get("embeds") or [])
    if "components" in body or creating:
        after.components = list(body.get("components") or [])
    if "allowed_mentions" in body:
        after.allowed_mentions = body["allowed_mentions"]
    if creating:
        after.flags = int(body.get("flags") or 0) & CREATABLE_FLAGS
        after.message_reference = body.get("message_reference")
    elif body.get("flags") is not None:
        after.flags = (after.flags & ~EDITABLE_FLAGS) | (int(body["flags"]) & EDITABLE_FLAGS)
        after.flags |= message.flags & COMPONENTS_V2
    after.attachments = merge_attachments(state, message, body, files)

    if len(after.content) > rules.max_content:
        raise too_long(f"{where}content", rules.max_content)
    check_embeds(after.embeds, rules, where)
    if len(after.attachments) > rules.max_attachments:
        raise DiscordError(400, 30015, f"Maximum number of attachments in a message reached ({rules.max_attachments})")
    if after.flags & COMPONENTS_V2:
        # The request may not use content/embeds with the flag; what an edit turns into v2 loses them. Once
        # set, the flag stays (discord-api-docs components/reference.mdx).
        if body.get("content") or body.get("embeds"):
            raise form_error(
                f"{where}content",
                "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                "The 'content' and 'embeds' fields cannot be used when using MessageFlags.IS_COMPONENTS_V2",
            )
        after.content, after.embeds = "", []
    check_components(after.components, after.flags, rules, where)
    empty = not (after.content or after.embeds or after.components or after.attachments or body.get("poll"))
    if rules.reject_empty and empty and not message.loading:
        raise DiscordError(400, 50006, "Cannot send an empty message")
    if not creating:
        after.flags &= ~LOADING
        after.edited = None if message.loading else state.clock()
    return after


def merge_attachments(
    state: DiscordState, message: StoredMessage, body: Json, files: list[RecordedFile]
) -> list[StoredAttachment]:
    """v10 semantics: with an `attachments` array, keep only the existing attachments it lists (by id); every
    uploaded file is added, named and described by its entry (`{"id": n}` refers to `files[n]`)."""
    listed = body.get("attachments")
    entries = {str(entry.get("id")): entry for entry in listed or [] if isinstance(entry, dict)}
    if listed is None:
        kept = list(message.attachments)
    else:
        kept = [attachment for attachment in message.attachments if str(attachment.id) in entries]
    for upload in files:
        index = upload.field.removeprefix("files[").removesuffix("]")
        entry = entries.get(index, {})
        filename = str(entry.get("filename") or upload.filename)
        attachment_id = state.snowflakes()
        kept.append(
            StoredAttachment(
                id=attachment_id,
                filename=filename,
                data=upload.data,
                content_type=media_type(filename, upload.content_type),
                uploaded_as=upload.content_type,
                url=state.attachment_url(message.channel_id, attachment_id, filename),
                description=entry.get("description"),
            )
        )
    return kept


def commit(state: DiscordState, message: StoredMessage, after: StoredMessage) -> StoredMessage:
    """Store an edit validated by `apply_body` and keep a snapshot of it."""
    for name in ("content", "embeds", "components", "flags", "attachments", "allowed_mentions", "edited"):
        setattr(message, name, getattr(after, name))
    message.at = time.monotonic()
    for attachment in message.attachments:
        state.blobs[attachment.id] = (attachment.filename, attachment.data, attachment.content_type)
    message.history.append(message.snapshot())
    return message


# --- the REST application ---------------------------------------------------------------------------------------

BOT_ROUTES = ("/users", "/oauth2", "/applications", "/channels", "/gateway/bot", "/guilds")


def needs_bot_token(path: str) -> bool:
    return path.startswith(BOT_ROUTES)


async def read_body(request: web.Request) -> tuple[Any, list[RecordedFile]]:
    """JSON body, or multipart `payload_json` + `files[n]` parts."""
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        files: list[RecordedFile] = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.filename is not None:
                data = bytes(await part.read(decode=False))
                files.append(RecordedFile(part.name or "", part.filename, data, part.headers.get(hdrs.CONTENT_TYPE)))
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    if request.content_type == JSON_TYPE:
        return json.loads(raw), []
    return raw.decode("utf-8", "replace"), []


class RestApi:
    """Routes Discord's REST paths to handlers; see the ROUTES table at the end of the class."""

    def __init__(self, state: DiscordState) -> None:
        self.state = state
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in self._table()
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        path = "/" + request.match_info["tail"]
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        scheme, _, secret = (authorization or "").partition(" ")
        headers = {key: value for key, value in request.headers.items() if key.lower() != "authorization"}
        rec = Recorded(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=headers,
            auth=scheme if authorization else None,
            json=None,
            files=[],
            at=time.monotonic(),
        )
        state.requests.append(rec)
        dropping = next((f for f in state.faults if f.drop and f.matches(rec.method, rec.path)), None)
        if dropping is not None:
            return await self._drop(request, rec, dropping)
        try:
            rec.json, rec.files = await read_body(request)
            token_ok = scheme == "Bot" and (state.token is None or hmac.compare_digest(secret, state.token))
            status, body, extra = await self._respond(Call(rec, (), request), token_ok)
        except DiscordError as error:
            status, body, extra = error.status, error.body(), {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            status, body, extra = 400, {"message": "The request body contains invalid JSON.", "code": 50109}, {}
        except Exception as error:  # a bug in the fake: answer, and let FakeDiscord.close() fail the test
            state.internal_errors.append(error)
            status, body, extra = 400, {"message": f"offline Discord failed: {error!r}", "code": 0}, {}
        rec.status, rec.response = status, body
        await state.touch()
        if body is None:
            return web.Response(status=status, headers=extra)
        data = json.dumps(body).encode()
        return web.Response(status=status, body=data, headers={hdrs.CONTENT_TYPE: JSON_TYPE, **extra})

    async def _drop(self, request: web.Request, rec: Recorded, fault: Fault) -> web.StreamResponse:
        """The network fails mid-upload: read the first bytes of the body, then reset the connection unanswered
        (the client sees a server disconnect or a connection reset, never an HTTP status)."""
        fault.hits += 1
        if fault.remaining is not None:
            fault.remaining -= 1
        await request.content.readany()
        rec.dropped = True
        transport = request.transport
        if transport is not None:
            transport.abort()
        await self.state.touch()
        raise asyncio.CancelledError  # nothing can be answered on a closed connection

    async def _respond(self, call: Call, token_ok: bool) -> Reply:
        rec = call.rec
        fault = next((f for f in self.state.faults if not f.drop and f.matches(rec.method, rec.path)), None)
        if fault is not None:
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status == 429:
                return rate_limited_reply(
                    fault.retry_after, limit=1, bucket="fault", is_global=fault.is_global, via=fault.via
                )
            if fault.status is not None:
                return fault.status, {"message": fault.message, "code": fault.code}, {}
        if needs_bot_token(rec.path) and not token_ok:
            return 401, {"message": "401: Unauthorized", "code": 0}, {}
        bucket_headers: dict[str, str] = {}
        now = asyncio.get_running_loop().time()
        for bucket in self.state.buckets:
            if not bucket.matches(rec.method, rec.path):
                continue
            allowed, remaining, reset_after = bucket.take(rec.path, now)
            if not allowed:
                return rate_limited_reply(reset_after, limit=bucket.limit, bucket=bucket.name)
            if bucket.announce:
                bucket_headers = {
                    "X-RateLimit-Limit": str(bucket.limit),
                    "X-RateLimit-Remaining": str(remaining),
                    "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                    "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                    "X-RateLimit-Bucket": bucket.name,
                }
        method_matched = False
        for method, pattern, handler in self.routes:
            match = pattern.match(rec.path)
            if match is None:
                continue
            if method != rec.method:
                method_matched = True
                continue
            status, body, extra = await handler(Call(rec, match.groups(), call.request))
            return status, body, {**bucket_headers, **extra}
        if method_matched:
            return 405, {"message": "405: Method Not Allowed", "code": 0}, {}
        return 404, {"message": "404: Not Found", "code": 0}, {}

    def _table(self) -> list[tuple[str, str, Handler]]:
        app = r"(\d+)"
        token = r"([^/]+)"
        snowflake = r"(\d+)"
        return [
            ("GET", r"/users/@me", self.get_me),
            ("GET", r"/oauth2/applications/@me", self.get_application),
            ("GET", r"/applications/@me", self.get_application),
            ("GET", r"/gateway", self.get_gateway),
            ("GET", r"/gateway/bot", self.get_gateway_bot),
            ("GET", rf"/applications/{app}/commands", self.get_commands),
            ("PUT", rf"/applications/{app}/commands", self.put_commands),
            ("POST", rf"/applications/{app}/commands", self.post_command),
            ("DELETE", rf"/applications/{app}/commands/{snowflake}", self.delete_command),
            ("GET", rf"/applications/{app}/guilds/{snowflake}/commands", self.get_commands),
            ("PUT", rf"/applications/{app}/guilds/{snowflake}/commands", self.put_commands),
            ("POST", rf"/applications/{app}/guilds/{snowflake}/commands", self.post_command),
            ("DELETE", rf"/applications/{app}/guilds/{snowflake}/commands/{snowflake}", self.delete_command),
            ("POST", rf"/interactions/{snowflake}/{token}/callback", self.post_callback),
            ("GET", rf"/webhooks/{app}/{token}/messages/@original", self.get_original),
            ("PATCH", rf"/webhooks/{app}/{token}/messages/@original", self.patch_original),
            ("DELETE", rf"/webhooks/{app}/{token}/messages/@original", self.delete_original),
            ("POST", rf"/webhooks/{app}/{token}", self.post_followup),
            ("GET", rf"/webhooks/{app}/{token}/messages/{snowflake}", self.get_webhook_message),
            ("PATCH", rf"/webhooks/{app}/{token}/messages/{snowflake}", self.patch_webhook_message),
            ("DELETE", rf"/webhooks/{app}/{token}/messages/{snowflake}", self.delete_webhook_message),
            ("POST", r"/users/@me/channels", self.create_dm),
            ("GET", rf"/guilds/{snowflake}", self.get_guild),
            ("GET", rf"/guilds/{snowflake}/channels", self.get_guild_channels),
            ("GET", rf"/guilds/{snowflake}/members/{snowflake}", self.get_member),
            ("GET", rf"/channels/{snowflake}", self.get_channel),
            ("POST", rf"/channels/{snowflake}/typing", self.typing),
            ("GET", rf"/channels/{snowflake}/messages", self.get_channel_messages),
            ("POST", rf"/channels/{snowflake}/messages", self.post_channel_message),
            ("GET", rf"/channels/{snowflake}/messages/{snowflake}", self.get_channel_message),
            ("PATCH", rf"/channels/{snowflake}/messages/{snowflake}", self.patch_channel_message),
            ("DELETE", rf"/channels/{snowflake}/messages/{snowflake}", self.delete_channel_message),
        ]

    # --- login and gateway discovery ---

    async def get_me(self, call: Call) -> Reply:
        return ok({**self.state.bot.to_json(), "verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def get_application(self, call: Call) -> Reply:
        state = self.state
        return ok(
            {
                "id": str(state.application_id),
                "name": state.bot.username,
                "description": "Songs from prompts.",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": state.owner.to_json(),
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": state.bot.to_json(),
                "install_params": {"scopes": ["bot", "applications.commands"], "permissions": "0"},
                "integration_types_config": {"0": {}},
                "approximate_guild_count": len(state.guilds),
            }
        )

    async def get_gateway(self, call: Call) -> Reply:
        return ok({"url": self.state.base_url.replace("http://", "ws://", 1) + "/gateway"})

    async def get_gateway_bot(self, call: Call) -> Reply:
        limits = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        url = self.state.base_url.replace("http://", "ws://", 1) + "/gateway"
        return ok({"url": url, "shards": 1, "session_start_limit": limits})

    # --- application commands ---

    def _command_scope(self, call: Call) -> int | None:
        if int(call.args[0]) != self.state.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        return int(call.args[1]) if "/guilds/" in call.rec.path else None

    def _echo_command(self, command: Json, scope: int | None, existing: list[Json]) -> Json:
        state = self.state
        same = next(
            (c for c in existing if (c["name"], c.get("type", 1)) == (command["name"], command.get("type", 1))), None
        )
        echoed = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            "name_localizations": None,
            "description_localizations": None,
            **command,
            "id": same["id"] if same else str(state.snowflakes()),
            "application_id": str(state.application_id),
            "version": str(state.snowflakes()),
        }
        if scope is not None:
            echoed["guild_id"] = str(scope)
        return echoed

    async def get_commands(self, call: Call) -> Reply:
        return ok(self.state.commands.get(self._command_scope(call), []))

    async def put_commands(self, call: Call) -> Reply:
        scope = self._command_scope(call)
        body = call.rec.json
        if not isinstance(body, list):
            raise form_error("_", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        for index, command in enumerate(body):
            validate_command(command, f"{index}.")
        existing = self.state.commands.get(scope, [])
        echoed = [self._echo_command(command, scope, existing) for command in body]
        self.state.commands[scope] = echoed
        self.state.command_syncs.append(CommandSync(scope, echoed, time.monotonic()))
        return ok(echoed)

    async def post_command(self, call: Call) -> Reply:
        scope = self._command_scope(call)
        command = call.rec.json
        validate_command(command, "")
        existing = self.state.commands.get(scope, [])
        echoed = self._echo_command(command, scope, existing)
        self.state.commands[scope] = [c for c in existing if c["id"] != echoed["id"]] + [echoed]
        return ok(echoed, 201)

    async def delete_command(self, call: Call) -> Reply:
        scope = self._command_scope(call)
        existing = self.state.commands.get(scope, [])
        kept = [command for command in existing if command["id"] != call.args[-1]]
        if len(kept) == len(existing):
            raise DiscordError(404, 10063, "Unknown application command")
        self.state.commands[scope] = kept
        return no_content()

    # --- interaction callback ---

    async def post_callback(self, call: Call) -> Reply:
        state = self.state
        record = state.interactions.get(int(call.args[0]))
        if record is None or record.token != call.args[1]:
            raise unknown_interaction()
        if record.callback is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        age = record.age(state.clock())
        deadline = state.rules.callback_deadline
        if deadline is not None and age > deadline:
            raise unknown_interaction()
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        kind = body.get("type")
        data = body.get("data") or {}
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}.get(record.type, set())
        if kind not in allowed or (kind in (6, 7) and record.source_message_id is None):
            raise form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Interaction response type is invalid")
        message: StoredMessage | None = None
        if kind == 9:
            validate_modal(data)
            record.modal = data
        elif kind in (4, 5):
            flags = int(data.get("flags") or 0) & EPHEMERAL
            draft = self._interaction_message(record, flags | (LOADING if kind == 5 else 0))
            content = data if kind == 4 else {"flags": flags}
            after = apply_body(
                state, draft, content, call.rec.files, creating=True, limit=record.size_limit, where="data."
            )
            after.flags |= LOADING if kind == 5 else 0
            message = state.add_message(after)
            record.original_id = message.id
        elif kind in (6, 7):
            source = state.messages.get(record.source_message_id or 0)
            if source is None:
                raise unknown_message()
            if kind == 7:
                after = apply_body(
                    state, source, data, call.rec.files, creating=False, limit=record.size_limit, where="data."
                )
                message = commit(state, source, after)
            record.original_id = source.id
        record.callback = Callback(kind, data, call.rec.files, call.rec.at, age)
        if call.rec.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        answer: Json = {
            "interaction": {
                "id": str(record.id),
                "type": record.type,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message is not None and message.ephemeral),
            }
        }
        if message is not None:
            answer["interaction"]["response_message_id"] = str(message.id)
        if kind in (4, 7) and message is not None:
            answer["resource"] = {"type": kind, "message": message.to_json(state.users)}
        return ok(answer)

    def _interaction_message(self, record: InteractionRecord, flags: int) -> StoredMessage:
        state = self.state
        user = state.users.get(record.user_id)
        metadata: Json = {
            "id": str(record.id),
            "type": record.type,
            "user": user.to_json() if user else {"id": str(record.user_id)},
            "authorizing_integration_owners": record.payload.get("authorizing_integration_owners", {}),
        }
        if record.type == 2:
            metadata["name"] = record.payload.get("data", {}).get("name", "")
        if record.original_id is not None:
            metadata["original_response_message_id"] = str(record.original_id)
        now = state.clock()
        return StoredMessage(
            id=state.snowflakes(),
            channel_id=record.channel_id,
            author=state.bot,
            created=now,
            at=time.monotonic(),
            type=20 if record.type == 2 else 0,
            flags=flags,
            webhook_id=state.application_id,
            interaction_id=record.id,
            interaction_metadata=metadata,
            visible_to=record.user_id if flags & EPHEMERAL else None,
        )

    # --- interaction webhooks ---

    def _original(self, record: InteractionRecord) -> StoredMessage:
        message = self.state.messages.get(record.original_id or 0)
        if message is None or message.deleted:
            raise unknown_message()
        return message

    def _webhook_message(self, record: InteractionRecord, message_id: str) -> StoredMessage:
        wanted = int(message_id)
        if wanted != record.original_id and wanted not in record.followup_ids:
            raise unknown_message()
        message = self.state.messages.get(wanted)
        if message is None or message.deleted:
            raise unknown_message()
        return message

    def _edit(self, record: InteractionRecord, message: StoredMessage, call: Call) -> Reply:
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        after = apply_body(self.state, message, body, call.rec.files, creating=False, limit=record.size_limit)
        return ok(commit(self.state, message, after).to_json(self.state.users))

    async def get_original(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args)
        return ok(self._original(record).to_json(self.state.users))

    async def patch_original(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args)
        return self._edit(record, self._original(record), call)

    async def delete_original(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args)
        self._original(record).deleted = True
        return no_content()

    async def get_webhook_message(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args[:2])
        return ok(self._webhook_message(record, call.args[2]).to_json(self.state.users))

    async def patch_webhook_message(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args[:2])
        return self._edit(record, self._webhook_message(record, call.args[2]), call)

    async def delete_webhook_message(self, call: Call) -> Reply:
        record = self.state.interaction_for(*call.args[:2])
        self._webhook_message(record, call.args[2]).deleted = True
        return no_content()

    async def post_followup(self, call: Call) -> Reply:
        """A followup; the first one after a defer replaces the "thinking…" message instead (notes section 1)."""
        state = self.state
        record = state.interaction_for(*call.args)
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        original = state.messages.get(record.original_id or 0)
        if original is not None and original.loading and not original.deleted:
            after = apply_body(state, original, body, call.rec.files, creating=False, limit=record.size_limit)
            message = commit(state, original, after)
        else:
            draft = self._interaction_message(record, int(body.get("flags") or 0) & EPHEMERAL)
            after = apply_body(state, draft, body, call.rec.files, creating=True, limit=record.size_limit)
            message = state.add_message(after)
            record.followup_ids.append(message.id)
        if call.rec.query.get("wait") in ("1", "true", "True"):
            return ok(message.to_json(state.users))
        return no_content()

    # --- channels and DMs (bot token) ---

    def _bot_channel(self, channel_id: str, need: int) -> FakeChannel:
        state = self.state
        channel = state.channel(int(channel_id))
        if channel is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        if channel.is_dm:
            if channel.recipients and channel.recipients[0].id in state.closed_dms and need & Perm.SEND_MESSAGES:
                raise DiscordError(403, 50007, "Cannot send messages to this user")
            return channel
        if not state.rules.check_permissions:
            return channel
        if not channel.bot_permissions & Perm.VIEW_CHANNEL:
            raise DiscordError(403, 50001, "Missing Access")
        if channel.bot_permissions & need != need:
            raise DiscordError(403, 50013, "Missing Permissions")
        return channel

    def _send_permissions(self, channel_id: str, with_files: bool) -> int:
        channel = self.state.channel(int(channel_id))
        send = Perm.SEND_MESSAGES_IN_THREADS if channel is not None and channel.is_thread else Perm.SEND_MESSAGES
        return int(Perm.VIEW_CHANNEL | send | (Perm.ATTACH_FILES if with_files else 0))

    def _channel_message(self, channel: FakeChannel, message_id: str) -> StoredMessage:
        message = self.state.messages.get(int(message_id))
        if message is None or message.deleted or message.channel_id != channel.id or message.ephemeral:
            raise unknown_message()
        return message

    async def create_dm(self, call: Call) -> Reply:
        state = self.state
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        user = state.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise form_error("recipient_id", "NUMBER_TYPE_COERCE", "Value is not a known user.")
        return ok(state.dm_channel(user).to_json())

    def _guild(self, guild_id: str) -> FakeGuild:
        guild = self.state.guilds.get(int(guild_id))
        if guild is None:
            raise DiscordError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, call: Call) -> Reply:
        data = self._guild(call.args[0]).to_json(self.state.bot, joined_at=self.state.started)
        keep = ("channels", "threads", "members", "voice_states", "presences", "joined_at", "large", "unavailable")
        return ok({key: value for key, value in data.items() if key not in keep})

    async def get_guild_channels(self, call: Call) -> Reply:
        return ok(self._guild(call.args[0]).to_json(self.state.bot, joined_at=self.state.started)["channels"])

    async def get_member(self, call: Call) -> Reply:
        guild = self._guild(call.args[0])
        user = self.state.users.get(int(call.args[1]))
        if user is None:
            raise DiscordError(404, 10007, "Unknown Member")
        if user.id == self.state.bot.id:
            return ok(guild.to_json(self.state.bot, joined_at=self.state.started)["members"][0])
        member = member_json(user, roles=[], permissions=guild.everyone.permissions, joined_at=self.state.started)
        member.pop("permissions")
        return ok(member)

    async def get_channel(self, call: Call) -> Reply:
        channel = self._bot_channel(call.args[0], Perm.VIEW_CHANNEL)
        return ok(channel.to_json(bot_id=self.state.bot.id))

    async def typing(self, call: Call) -> Reply:
        self._bot_channel(call.args[0], self._send_permissions(call.args[0], False))
        return no_content()

    async def get_channel_messages(self, call: Call) -> Reply:
        channel = self._bot_channel(call.args[0], Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        limit = int(call.rec.query.get("limit", "50"))
        ids = reversed(self.state.channel_order.get(channel.id, []))
        found = [self.state.messages[i] for i in ids if not self.state.messages[i].deleted]
        return ok([message.to_json(self.state.users) for message in found if not message.ephemeral][:limit])

    async def post_channel_message(self, call: Call) -> Reply:
        state = self.state
        channel = self._bot_channel(call.args[0], self._send_permissions(call.args[0], bool(call.rec.files)))
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        draft = StoredMessage(
            id=state.snowflakes(),
            channel_id=channel.id,
            author=state.bot,
            created=state.clock(),
            at=time.monotonic(),
            type=19 if body.get("message_reference") else 0,
        )
        after = apply_body(state, draft, body, call.rec.files, creating=True, limit=state.upload_limit(channel))
        after.flags &= ~EPHEMERAL
        return ok(state.add_message(after).to_json(state.users))

    async def get_channel_message(self, call: Call) -> Reply:
        channel = self._bot_channel(call.args[0], Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        return ok(self._channel_message(channel, call.args[1]).to_json(self.state.users))

    async def patch_channel_message(self, call: Call) -> Reply:
        state = self.state
        channel = self._bot_channel(call.args[0], Perm.VIEW_CHANNEL)
        message = self._channel_message(channel, call.args[1])
        if message.author.id != state.bot.id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body = call.rec.json if isinstance(call.rec.json, dict) else {}
        after = apply_body(state, message, body, call.rec.files, creating=False, limit=state.upload_limit(channel))
        return ok(commit(state, message, after).to_json(state.users))

    async def delete_channel_message(self, call: Call) -> Reply:
        channel = self._bot_channel(call.args[0], Perm.VIEW_CHANNEL)
        message = self._channel_message(channel, call.args[1])
        if message.author.id != self.state.bot.id and not channel.bot_permissions & Perm.MANAGE_MESSAGES:
            raise DiscordError(403, 50013, "Missing Permissions")
        message.deleted = True
        return no_content()


# --- validation of what the bot registers or shows --------------------------------------------------------------

COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


def validate_command(command: Any, where: str) -> None:
    """The documented limits of an application command (discord-api-docs `application-commands.mdx`)."""
    if not isinstance(command, dict) or "name" not in command:
        raise form_error(f"{where}name", "BASE_TYPE_REQUIRED", "This field is required")
    name = str(command["name"])
    if command.get("type", 1) == 1:
        if not COMMAND_NAME.match(name) or name != name.lower():
            raise form_error(f"{where}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if not 1 <= len(command.get("description") or "") <= 100:
            raise form_error(f"{where}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    validate_options(command.get("options") or [], f"{where}options.")


def validate_options(options: list[Json], where: str) -> None:
    if len(options) > 25:
        raise too_long(where.rstrip("."), 25)
    seen_optional = False
    for index, option in enumerate(options):
        here = f"{where}{index}."
        name = str(option.get("name", ""))
        if not COMMAND_NAME.match(name) or name != name.lower():
            raise form_error(f"{here}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if not 1 <= len(option.get("description") or "") <= 100:
            raise form_error(f"{here}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if len(option.get("choices") or []) > 25:
            raise too_long(f"{here}choices", 25)
        if option.get("type") in (1, 2):
            validate_options(option.get("options") or [], f"{here}options.")
            continue
        if option.get("required"):
            if seen_optional:
                raise form_error(
                    f"{here}required", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", "Required options must be first"
                )
        else:
            seen_optional = True


def validate_modal(data: Json) -> None:
    """Modal limits (discord-api-docs `components/reference.mdx`): title ≤45, custom_id 1–100, 1–5 top-level
    components, text inputs with max_length ≤4000."""
    if not 1 <= len(data.get("title") or "") <= 45:
        raise form_error("data.title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        raise form_error("data.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        raise form_error("data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    for index, top in enumerate(components):
        if top.get("type") == 18 and len(top.get("label") or "") > 45:
            raise too_long(f"data.components.{index}.label", 45)
        for inner in walk_components([top]):
            if inner.get("type") != 4:
                continue
            if len(inner.get("custom_id") or "") > 100:
                raise too_long(f"data.components.{index}.custom_id", 100)
            if int(inner.get("max_length") or 0) > 4000 or int(inner.get("min_length") or 0) > 4000:
                raise form_error(f"data.components.{index}.max_length", "NUMBER_TYPE_MAX", "Must be 4000 or less.")
            if top.get("type") == 1 and len(inner.get("label") or "") > 45:
                raise too_long(f"data.components.{index}.label", 45)
