"""An offline Discord for the demo and the end-to-end tests: `FakeDiscord` serves the REST API and the gateway on
127.0.0.1, enforces Discord's rules, records every request and keeps what members would see (how faithful, and
where not: docs/offline.md).

    fake = FakeDiscord(token="test-token")
    await fake.start()
    with point_discord_py_at(fake):            # or DISCORD_API_BASE / DISCORD_GATEWAY_URL for bot.py
        task = asyncio.create_task(bot.start("test-token"))
        await bot.wait_until_ready()
        record = await fake.send_interaction(fake.slash("song", {"prompt": "a sea shanty"}))
        callback = await fake.wait_for_callback(record.id)
        await fake.wait_until(lambda: fake.original(record.id) and not fake.original(record.id).loading)
        await bot.close()
        await task
    await fake.close()

The REST half lives in `services/offline/discord_rest.py` (rules, store, faults), the gateway in
`services/offline/discord_gateway.py`, and payload shapes in `services/offline/payloads.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Self

from aiohttp import web

from services.offline.discord_gateway import Gateway
from services.offline.discord_rest import (
    Bucket,
    Callback,
    CommandSync,
    DiscordState,
    Fault,
    InteractionRecord,
    Recorded,
    RestApi,
    Rules,
    StoredMessage,
)
from services.offline.payloads import (
    BOT_PERMISSIONS,
    DEFAULT_UPLOAD_LIMIT,
    MEMBER_PERMISSIONS,
    ChannelType,
    FakeChannel,
    FakeGuild,
    FakeRole,
    FakeUser,
    InteractionType,
    Json,
    MiB,
    UploadedFile,
    command_data,
    member_json,
    modal_components,
    modal_inputs,
    snowflake_seconds,
)

__all__ = [
    "BOT_PERMISSIONS",
    "DEFAULT_UPLOAD_LIMIT",
    "MEMBER_PERMISSIONS",
    "Callback",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeRole",
    "FakeUser",
    "InteractionRecord",
    "Recorded",
    "StoredMessage",
    "point_discord_py_at",
]

ERROR_MESSAGES = {
    10003: "Unknown Channel",
    10008: "Unknown Message",
    10015: "Unknown Webhook",
    10062: "Unknown interaction",
    30015: "Maximum number of attachments in a message reached (10)",
    40005: "Request entity too large",
    40060: "Interaction has already been acknowledged.",
    50001: "Missing Access",
    50006: "Cannot send an empty message",
    50007: "Cannot send messages to this user",
    50013: "Missing Permissions",
    50027: "Invalid Webhook Token",
    50035: "Invalid Form Body",
}

_DEFAULT: Any = object()


class FakeDiscord:
    """Discord's REST API (`api_base`) and gateway (`gateway_url`) on one local port.

    A default guild (`guild`, with text channel `channel`) and a default member (`user`) exist from the
    start; add more with `add_guild`, `guild.add_channel`, `guild.add_role` and `add_user` *before* the bot
    connects (they are sent in READY/GUILD_CREATE). `rules` holds the enforced limits.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        heartbeat_interval: float = 41.25,
        clock: Callable[[], float] = time.time,
        guild_name: str = "Songbot Test",
        premium_tier: int = 0,
        seed: int = 0,
    ) -> None:
        """`token`: the bot token to accept (None accepts any `Bot …`). `clock`: Unix seconds, the fake's
        "now" for the 3 s and 15 min interaction rules and new snowflakes."""
        self.state = DiscordState(clock=clock, token=token, seed=seed)
        self.rest = RestApi(self.state)
        self.gateway = Gateway(
            self.state,
            heartbeat_interval_ms=int(heartbeat_interval * 1000),
            guild_payloads=self._guild_payloads,
            touch=self.state.touch,
        )
        self.guild = self.add_guild(guild_name, premium_tier=premium_tier)
        self.channel = self.guild.channels[0]
        self.user = self.add_user("member")
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * MiB)
        app.router.add_route("*", "/api/v10/{tail:.*}", self.rest.handle)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway-resume", self.gateway.handle)
        app.router.add_get("/attachments/{channel}/{id}/{filename}", self._serve_attachment)
        app.router.add_get("/media/attachments/{channel}/{id}/{filename}", self._serve_attachment)
        runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.state.base_url = f"http://127.0.0.1:{self._port}"

    async def close(self) -> None:
        """Stop serving; raises AssertionError if a request handler of the fake itself failed."""
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.state.internal_errors:
            raise AssertionError(f"the offline Discord failed while serving: {self.state.internal_errors!r}")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started")
        return self.state.base_url

    @property
    def api_base(self) -> str:
        """E.g. "http://127.0.0.1:PORT/api/v10" (discord.py's `Route.BASE`, songbot's DISCORD_API_BASE)."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """E.g. "ws://127.0.0.1:PORT/gateway" (DiscordWebSocket.DEFAULT_GATEWAY, DISCORD_GATEWAY_URL)."""
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    @property
    def rules(self) -> Rules:
        return self.state.rules

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def bot_user(self) -> FakeUser:
        return self.state.bot

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    @property
    def command_syncs(self) -> list[CommandSync]:
        return self.state.command_syncs

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        blob = self.state.blobs.get(int(request.match_info["id"]))
        if blob is None or blob[0] != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        _filename, data, content_type = blob
        return web.Response(body=data, headers={"Content-Type": content_type or "application/octet-stream"})

    # --- the world ---

    def add_guild(
        self, name: str, *, premium_tier: int = 0, locale: str = "en-US", channels: Iterable[str] = ("general",)
    ) -> FakeGuild:
        state = self.state
        guild_id = state.snowflakes()
        guild = FakeGuild(
            id=guild_id,
            name=name,
            owner_id=state.owner.id,
            premium_tier=premium_tier,
            locale=locale,
            snowflakes=state.snowflakes,
        )
        guild.roles.append(FakeRole(id=guild_id, name="@everyone", permissions=MEMBER_PERMISSIONS))
        guild.roles.append(
            FakeRole(
                id=state.snowflakes(),
                name=state.bot.username,
                permissions=BOT_PERMISSIONS,
                position=1,
                managed=True,
                bot_id=state.bot.id,
            )
        )
        for channel_name in channels:
            guild.add_channel(channel_name)
        state.guilds[guild.id] = guild
        return guild

    def add_user(self, username: str, *, global_name: str | None = None) -> FakeUser:
        user = FakeUser(id=self.state.snowflakes(), username=username, global_name=global_name)
        self.state.users[user.id] = user
        return user

    def _guild_payloads(self) -> list[Json]:
        return [guild.to_json(self.state.bot, joined_at=self.state.started) for guild in self.state.guilds.values()]

    async def set_bot_permissions(self, channel: FakeChannel, permissions: int) -> None:
        """Change what the bot may do in `channel` (enforced on bot-token posts: 403/50013) and tell a
        connected client with CHANNEL_UPDATE, as Discord would."""
        channel.bot_permissions = permissions
        guild = self.state.guild_of(channel)
        if guild is not None and self.gateway.connected:
            role = guild.bot_role
            role_permissions = role.permissions if role else guild.everyone.permissions
            await self.dispatch(
                "CHANNEL_UPDATE", channel.to_json(bot_id=self.state.bot.id, bot_role_permissions=role_permissions)
            )

    def close_dms(self, user: FakeUser) -> None:
        """The member does not accept DMs from the bot: posts to their DM channel get 403/50007."""
        self.state.closed_dms.add(user.id)

    def upload(self, filename: str, data: bytes, content_type: str | None = None) -> UploadedFile:
        """A file a member attaches to a slash option (type 11); the fake serves its bytes at `url`."""
        attachment_id = self.state.snowflakes()
        url = f"{self.base_url}/attachments/0/{attachment_id}/{filename}"
        self.state.blobs[attachment_id] = (filename, data, content_type)
        return UploadedFile(attachment_id, filename, data, content_type, url)

    # --- interaction payloads ---

    def _context(
        self,
        kind: int,
        *,
        user: FakeUser | None,
        guild: FakeGuild | None,
        channel: FakeChannel | None,
        dm: bool,
        permissions: int,
        roles: Sequence[FakeRole | int],
        app_permissions: int | None,
        created_at: datetime | None,
        attachment_size_limit: int,
        locale: str,
    ) -> Json:
        """The fields every interaction carries (docs/offline.md: version, attachment_size_limit, member
        or user, a full channel object) around a new snowflake id at `created_at` (default: now)."""
        state = self.state
        user = user or self.user
        state.users.setdefault(user.id, user)
        interaction_id = state.snowflakes(created_at)
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(state.application_id),
            "type": kind,
            "token": state.tokens(),
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": attachment_size_limit,
        }
        if dm:
            dm_channel = channel or state.dm_channel(user)
            payload.update(
                user=user.to_json(),
                channel_id=str(dm_channel.id),
                channel=dm_channel.to_json(),
                context=1,
                authorizing_integration_owners={"0": str(state.owner.id)},
                app_permissions=str(int(app_permissions if app_permissions is not None else BOT_PERMISSIONS)),
            )
            return payload
        guild = guild or self.guild
        channel = channel or guild.channels[0]
        role_ids = [role.id if isinstance(role, FakeRole) else int(role) for role in roles]
        bot_role = guild.bot_role
        channel_json = channel.to_json(
            bot_id=state.bot.id, bot_role_permissions=bot_role.permissions if bot_role else BOT_PERMISSIONS
        )
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": guild.locale, "features": list(guild.features)},
            guild_locale=guild.locale,
            channel_id=str(channel.id),
            channel={**channel_json, "permissions": str(int(permissions))},
            member=member_json(user, roles=role_ids, permissions=permissions, joined_at=state.started),
            app_permissions=str(int(app_permissions if app_permissions is not None else channel.bot_permissions)),
            context=0,
            authorizing_integration_owners={"0": str(guild.id)},
        )
        return payload

    def slash(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[Json] | None = None,
        *,
        user: FakeUser | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        dm: bool = False,
        permissions: int = MEMBER_PERMISSIONS,
        roles: Sequence[FakeRole | int] = (),
        app_permissions: int | None = None,
        created_at: datetime | None = None,
        attachment_size_limit: int = DEFAULT_UPLOAD_LIMIT,
        locale: str = "en-US",
    ) -> Json:
        """A CHAT_INPUT interaction. `name`: "song", "quota show" (subcommand) or "admin quota set" (group
        + subcommand). `options`: {"prompt": "…", "instrumental": True, "lyrics_file": fake.upload(…)}
        (types from the values) or raw option objects. The command id (and `data.guild_id` for guild
        commands) come from what the bot registered, if it did. `created_at` in the past makes a late
        interaction (callback 10062 after `rules.callback_deadline`)."""
        payload = self._context(
            InteractionType.APPLICATION_COMMAND,
            user=user,
            guild=guild,
            channel=channel,
            dm=dm,
            permissions=permissions,
            roles=roles,
            app_permissions=app_permissions,
            created_at=created_at,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        root = name.split()[0]
        guild_id = None if dm else int(payload["guild_id"])
        command_id, scope = self._registered_command(root, guild_id)
        payload["data"] = command_data(command_id, name, options, guild_id=scope)
        return payload

    def _registered_command(self, name: str, guild_id: int | None) -> tuple[int, int | None]:
        for scope in (guild_id, None) if guild_id is not None else (None,):
            for command in self.state.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return int(command["id"]), scope
        return self.state.snowflakes(), None

    def _find_component_message(self, custom_id: str) -> StoredMessage:
        for message in sorted(self.state.messages.values(), key=lambda m: m.at, reverse=True):
            if message.deleted:
                continue
            if any(component.get("custom_id") == custom_id for component in message.all_components()):
                return message
        raise LookupError(f"no message shows a component {custom_id!r}")

    def click(
        self,
        custom_id: str,
        message: StoredMessage | None = None,
        *,
        user: FakeUser | None = None,
        values: Sequence[str] | None = None,
        permissions: int = MEMBER_PERMISSIONS,
        roles: Sequence[FakeRole | int] = (),
        created_at: datetime | None = None,
        attachment_size_limit: int = DEFAULT_UPLOAD_LIMIT,
        locale: str = "en-US",
        channel: FakeChannel | None = None,
    ) -> Json:
        """A MESSAGE_COMPONENT interaction: `user` pressed the button (or chose `values` in the select)
        `custom_id` on `message` (default: the newest message showing that component). `channel`: where the
        press comes from (default: the message's); another server's channel, or a DM, makes a forged press."""
        message = message or self._find_component_message(custom_id)
        component = message.component(custom_id)
        channel = channel or self.state.channel(message.channel_id)
        payload = self._context(
            InteractionType.MESSAGE_COMPONENT,
            user=user,
            guild=self.state.guild_of(channel) if channel else None,
            channel=channel,
            dm=channel is not None and channel.is_dm,
            permissions=permissions,
            roles=roles,
            app_permissions=None,
            created_at=created_at,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        data: Json = {"custom_id": custom_id, "component_type": component.get("type", 2)}
        if values is not None:
            data["values"] = list(values)
        payload["data"] = data
        payload["message"] = message.to_json(self.state.users)
        return payload

    def modal_submit(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        form: str = "label",
        message: StoredMessage | None = None,
        user: FakeUser | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        dm: bool = False,
        permissions: int = MEMBER_PERMISSIONS,
        roles: Sequence[FakeRole | int] = (),
        created_at: datetime | None = None,
        attachment_size_limit: int = DEFAULT_UPLOAD_LIMIT,
        locale: str = "en-US",
    ) -> Json:
        """A MODAL_SUBMIT interaction for modal `custom_id` with {text input custom_id: value}; `form`
        "label" (type 18 wrappers) or "row" (ActionRow wrappers). `message` if the modal came from a button."""
        payload = self._context(
            InteractionType.MODAL_SUBMIT,
            user=user,
            guild=guild,
            channel=channel,
            dm=dm,
            permissions=permissions,
            roles=roles,
            app_permissions=None,
            created_at=created_at,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        payload["data"] = {"custom_id": custom_id, "components": modal_components(values, form=form)}
        if message is not None:
            payload["message"] = message.to_json(self.state.users)
        return payload

    def submit_modal(
        self,
        interaction_id: int,
        values: Mapping[str, str],
        *,
        permissions: int = MEMBER_PERMISSIONS,
        created_at: datetime | None = None,
    ) -> Json:
        """Fill in the modal the bot answered `interaction_id` with (callback type 9), as the same member in
        the same channel. `values` keys are the text inputs' labels or custom ids; inputs left out are sent
        empty, as Discord does."""
        record = self.interaction(interaction_id)
        if record.modal is None:
            raise LookupError(f"interaction {interaction_id} was not answered with a modal")
        inputs = modal_inputs(record.modal)
        known = {key for custom_id, label, _ in inputs for key in (custom_id, label) if key}
        unknown = set(values) - known
        if unknown:
            raise KeyError(f"the modal has no inputs {sorted(unknown)}; it has {sorted(known)}")
        filled = {custom_id: values.get(custom_id, values.get(label or "", "")) for custom_id, label, _ in inputs}
        form = "label" if all(wrapper == 18 for _, _, wrapper in inputs) else "row"
        channel = self.state.channel(record.channel_id)
        source = self.state.messages.get(record.source_message_id or 0)
        return self.modal_submit(
            record.modal["custom_id"],
            filled,
            form=form,
            message=source,
            user=self.state.users.get(record.user_id),
            guild=self.state.guilds.get(record.guild_id or 0),
            channel=channel,
            dm=channel is not None and channel.is_dm,
            permissions=permissions,
            created_at=created_at,
            attachment_size_limit=record.size_limit,
        )

    # --- sending interactions and waiting ---

    async def send_interaction(self, payload: Json) -> InteractionRecord:
        """Register the interaction (its token, creation time from the snowflake, size limit) and dispatch
        INTERACTION_CREATE. Sending the same payload twice delivers it twice (same token: the second
        callback gets 40060)."""
        record = self.state.interactions.get(int(payload["id"]))
        if record is None:
            record = self._register(payload)
        await self.dispatch("INTERACTION_CREATE", payload)
        return record

    def _register(self, payload: Json) -> InteractionRecord:
        state = self.state
        channel_data = payload.get("channel") or {"id": payload.get("channel_id")}
        channel_id = int(channel_data["id"])
        if state.channel(channel_id) is None:
            state.other_channels[channel_id] = FakeChannel(
                id=channel_id,
                name=str(channel_data.get("name", "")),
                type=int(channel_data.get("type", ChannelType.GUILD_TEXT)),
                guild_id=int(payload["guild_id"]) if payload.get("guild_id") else None,
            )
        user = (payload.get("member") or {}).get("user") or payload.get("user") or {}
        source = payload.get("message")
        record = InteractionRecord(
            id=int(payload["id"]),
            token=str(payload["token"]),
            type=int(payload["type"]),
            payload=payload,
            created=snowflake_seconds(int(payload["id"])),
            size_limit=int(payload["attachment_size_limit"]),
            channel_id=channel_id,
            guild_id=int(payload["guild_id"]) if payload.get("guild_id") else None,
            user_id=int(user.get("id", 0)),
            source_message_id=int(source["id"]) if source else None,
        )
        state.interactions[record.id] = record
        state.by_token[record.token] = record
        return record

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
        """Wait until `predicate()` is truthy; it is re-checked after every request and gateway frame."""
        changed = self.state.condition()
        try:
            async with asyncio.timeout(timeout):
                async with changed:
                    await changed.wait_for(predicate)
        except TimeoutError:
            recent = "\n  ".join(f"{r.method} {r.path} -> {r.status} {r.code or ''}" for r in self.requests[-8:])
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last requests:\n  {recent}"
            ) from None

    async def wait_connected(self, identifies: int = 1, timeout: float = 5.0) -> None:
        """Wait until the client has IDENTIFYed `identifies` times in all and its socket is up (a bot
        started in another process: then `dispatch` and `send_interaction` reach it)."""
        gateway = self.gateway
        await self.wait_until(
            lambda: gateway.identify_count >= identifies and gateway.connected, timeout, f"IDENTIFY #{identifies}"
        )

    async def wait_for_callback(self, interaction_id: int, timeout: float = 5.0) -> Callback:
        """The accepted callback (defer, message, modal…) of an interaction."""
        record = self.interaction(interaction_id)
        await self.wait_until(lambda: record.callback is not None, timeout, f"a callback to {interaction_id}")
        assert record.callback is not None
        return record.callback

    async def wait_for_request(
        self, method: str, path: str, *, status: int | None = None, count: int = 1, timeout: float = 5.0
    ) -> Recorded:
        """The `count`-th request matching `method` and the `path` regex (and `status`, if given)."""

        def found() -> list[Recorded]:
            return [r for r in self.find_requests(method, path) if status is None or r.status == status]

        await self.wait_until(lambda: len(found()) >= count, timeout, f"{count}x {method} {path} ({status})")
        return found()[count - 1]

    # --- what Discord received and what members see ---

    def find_requests(self, method: str = "*", path: str = "") -> list[Recorded]:
        """Finished requests whose method matches (`*` for any) and whose path matches the regex."""
        pattern = re.compile(path)
        return [
            r for r in self.requests if r.status and method in ("*", r.method) and pattern.search(r.path) is not None
        ]

    def interaction(self, interaction_id: int) -> InteractionRecord:
        try:
            return self.state.interactions[int(interaction_id)]
        except KeyError:
            raise KeyError(f"interaction {interaction_id} was never sent") from None

    def callback(self, interaction_id: int) -> Callback | None:
        return self.interaction(interaction_id).callback

    def modal(self, interaction_id: int) -> Json | None:
        """The modal the bot answered with (callback type 9 data), if any."""
        return self.interaction(interaction_id).modal

    def original(self, interaction_id: int) -> StoredMessage | None:
        """The current state of the interaction's original response (for a component interaction answered
        with type 6/7: the message carrying the component)."""
        record = self.interaction(interaction_id)
        return self.state.messages.get(record.original_id or 0)

    def edits(self, interaction_id: int) -> list[StoredMessage]:
        """Snapshots of the original response after each change to it (PATCH @original, type 7 update, or
        the followup that replaced a "thinking…" message), oldest first; `.at` is when (monotonic)."""
        original = self.original(interaction_id)
        return [] if original is None else original.history[1:]

    def followups(self, interaction_id: int) -> list[StoredMessage]:
        record = self.interaction(interaction_id)
        return [self.state.messages[message_id] for message_id in record.followup_ids]

    def message(self, message_id: int) -> StoredMessage:
        return self.state.messages[int(message_id)]

    def channel_messages(
        self, channel: FakeChannel | int, *, visible_to: FakeUser | None = None
    ) -> list[StoredMessage]:
        """Messages in a channel, oldest first, as everyone sees them; with `visible_to`, also the ephemeral
        ones only that member sees. Deleted messages are left out."""
        channel_id = channel.id if isinstance(channel, FakeChannel) else int(channel)
        found = [self.state.messages[i] for i in self.state.channel_order.get(channel_id, [])]
        viewer = visible_to.id if visible_to is not None else None
        return [
            m for m in found if not m.deleted and (not m.ephemeral or (viewer is not None and m.visible_to == viewer))
        ]

    def dms(self, user: FakeUser | int) -> list[StoredMessage]:
        """Messages the bot sent to a member's DMs."""
        user_id = user.id if isinstance(user, FakeUser) else int(user)
        channel = self.state.dm_channels.get(user_id)
        return [] if channel is None else self.channel_messages(channel)

    def commands(self, guild: FakeGuild | None = None) -> list[Json]:
        """The commands the bot registered globally, or for `guild`."""
        return self.state.commands.get(guild.id if guild else None, [])

    # --- time, faults and rate limits ---

    def expire_token(self, interaction_id: int) -> None:
        """From now on the interaction's webhook routes answer 401/50027 (Invalid Webhook Token)."""
        record = self.interaction(interaction_id)
        lifetime = self.rules.token_lifetime or 15 * 60.0
        record.age_offset = lifetime + 1 - (self.state.clock() - record.created)

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        code: int = 0,
        message: str | None = None,
        *,
        times: int | None = 1,
        retry_after: float = 0.1,
        is_global: bool = False,
        via: bool = True,
        delay: float = 0.0,
    ) -> Fault:
        """Answer the next `times` requests (None: all) matching `method` (`*` any) and the `path` regex
        with `status` and `{"message", "code"}`. A 429 carries `retry_after`, X-RateLimit-* and Retry-After
        headers and, unless `via=False`, the `Via` header that makes discord.py wait and retry."""
        fault = Fault(
            method=method,
            pattern=re.compile(path),
            status=status,
            code=code,
            message=message or ERROR_MESSAGES.get(code, f"{status}: injected fault"),
            remaining=times,
            retry_after=retry_after,
            is_global=is_global,
            via=via,
            delay=delay,
        )
        self.state.faults.append(fault)
        return fault

    def drop_next(self, method: str, path: str, *, times: int | None = 1) -> Fault:
        """Cut the connection of the next `times` requests (None: all) matching `method` and the `path` regex
        mid-upload, with no answer: what a server disconnect or a connection reset looks like to the client."""
        fault = Fault(method, re.compile(path), None, 0, "", times, 0.0, False, True, 0.0, drop=True)
        self.state.faults.append(fault)
        return fault

    def slow_next(self, method: str, path: str, delay: float, *, times: int | None = 1) -> Fault:
        """Answer the next matching requests normally, but only after `delay` seconds."""
        fault = Fault(method, re.compile(path), None, 0, "", times, 0.0, False, True, delay)
        self.state.faults.append(fault)
        return fault

    def limit_bucket(
        self, method: str, path: str, *, limit: int, per: float, announce: bool = True, name: str | None = None
    ) -> Bucket:
        """A rate limit per concrete path (e.g. one interaction's @original): `limit` requests per `per`
        seconds, the next ones 429 with `retry_after` until the window ends. `announce` sends X-RateLimit-*
        headers on successes too, so a client can slow down before it hits the limit."""
        bucket = Bucket(method, re.compile(path), limit, per, announce, name or f"bucket{len(self.state.buckets)}")
        self.state.buckets.append(bucket)
        return bucket

    # --- gateway controls ---

    async def dispatch(self, event: str, data: Json) -> int:
        """Send a gateway dispatch (op 0) with the next sequence number; queued for replay while the
        client is disconnected."""
        return await self.gateway.dispatch(event, data)

    async def drop_gateway(self, *, resume: bool = True, code: int = 4000, abrupt: bool = False) -> None:
        """Close the bot's gateway socket; it reconnects and RESUMEs (or re-IDENTIFYs if `resume=False`)."""
        await self.gateway.drop(resume=resume, code=code, abrupt=abrupt)


@contextlib.contextmanager
def point_discord_py_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at `fake` for the duration; restores them after."""
    import discord.gateway
    import discord.http
    import yarl

    route, websocket = discord.http.Route, discord.gateway.DiscordWebSocket
    old_base, old_gateway = route.BASE, websocket.DEFAULT_GATEWAY
    route.BASE = fake.api_base
    websocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        route.BASE = old_base
        websocket.DEFAULT_GATEWAY = old_gateway
