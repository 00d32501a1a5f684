"""The gateway half of the offline Discord: one websocket endpoint speaking Discord's gateway protocol.

HELLO → (heartbeats answered with ACKs) → IDENTIFY → READY + one GUILD_CREATE per guild → dispatches with
sequence numbers. A dropped client RESUMEs on `resume_gateway_url` and gets the events it missed, then RESUMED.
Frames are plain-text JSON: discord.py asks for zlib-stream but only decompresses binary frames (docs/offline.md).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from services.offline.discord_rest import DiscordState
from services.offline.payloads import Json

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME, RECONNECT, MEMBERS, INVALID, HELLO, ACK = (
    0,
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
    10,
    11,
)


@dataclass
class Session:
    id: str
    seq: int = 0
    log: list[tuple[int, str, str]] = field(default_factory=list)
    """(sequence, event name, frame) of every dispatch, for replay on RESUME."""
    ws: web.WebSocketResponse | None = None
    identify: Json = field(default_factory=dict)
    valid: bool = True


@dataclass
class Connection:
    """One websocket the client opened: where, what it sent (IDENTIFY without its token), how it ended."""

    path: str
    query: dict[str, str]
    opened_at: float
    request: web.Request = field(repr=False)
    ws: web.WebSocketResponse = field(repr=False)
    received: list[tuple[Any, Any]] = field(default_factory=list)
    heartbeats: int = 0
    session: Session | None = None
    close_code: int | None = None


class Gateway:
    """The websocket handler plus the controls the tests and the demo use (`dispatch`, `drop`)."""

    def __init__(
        self,
        state: DiscordState,
        *,
        heartbeat_interval_ms: int,
        guild_payloads: Callable[[], list[Json]],
        touch: Callable[[], Awaitable[None]],
    ) -> None:
        self.state = state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._guild_payloads = guild_payloads
        self._touch = touch
        self.sessions: dict[str, Session] = {}
        self.current: Session | None = None
        self.connections: list[Connection] = []
        self.identify_count = 0
        self.resume_count = 0
        self._session_numbers = 0

    @property
    def connected(self) -> bool:
        return self.current is not None and self.current.ws is not None and not self.current.ws.closed

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        connection = Connection(request.path, dict(request.query), time.monotonic(), request, ws)
        self.connections.append(connection)
        await self._send(ws, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._on_frame(connection, json.loads(message.data))
                elif message.type is WSMsgType.ERROR:
                    break
        finally:
            connection.close_code = ws.close_code
            session = connection.session
            if session is not None and session.ws is ws:
                session.ws = None
            await self._touch()
        return ws

    async def _send(self, ws: web.WebSocketResponse, frame: Json) -> None:
        await ws.send_str(json.dumps({"s": None, "t": None, **frame}))

    async def _on_frame(self, connection: Connection, frame: Json) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == IDENTIFY and isinstance(data, dict):
            connection.received.append((op, {key: value for key, value in data.items() if key != "token"}))
        else:
            connection.received.append((op, data))
        if op == HEARTBEAT:
            connection.heartbeats += 1
            await self._send(connection.ws, {"op": ACK})
        elif op == IDENTIFY:
            await self._identify(connection, data if isinstance(data, dict) else {})
        elif op == RESUME:
            await self._resume(connection, data if isinstance(data, dict) else {})
        elif op in (PRESENCE, VOICE, MEMBERS):
            if connection.session is None:
                await connection.ws.close(code=4003, message=b"Not authenticated.")
        else:
            await connection.ws.close(code=4001, message=b"Unknown opcode.")
        await self._touch()

    def _token_ok(self, token: Any) -> bool:
        expected = self.state.token
        if not isinstance(token, str):
            return False
        return expected is None or hmac.compare_digest(token.removeprefix("Bot "), expected)

    async def _identify(self, connection: Connection, data: Json) -> None:
        if connection.session is not None:
            await connection.ws.close(code=4005, message=b"Already authenticated.")
            return
        if not self._token_ok(data.get("token")):
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        self._session_numbers += 1
        session = Session(id=f"fake-session-{self._session_numbers}", ws=connection.ws)
        session.identify = {key: value for key, value in data.items() if key != "token"}
        self.sessions[session.id] = session
        self.current = session
        connection.session = session
        self.identify_count += 1
        state = self.state
        guilds = self._guild_payloads()
        ready: Json = {
            "v": 10,
            "user": {**state.bot.to_json(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": guild["id"], "unavailable": True} for guild in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": f"{state.base_url.replace('http://', 'ws://', 1)}/gateway-resume",
            "application": {"id": str(state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._dispatch_to(session, "READY", ready)
        for guild in guilds:
            await self._dispatch_to(session, "GUILD_CREATE", guild)

    async def _resume(self, connection: Connection, data: Json) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or not session.valid or not self._token_ok(data.get("token")):
            await self._send(connection.ws, {"op": INVALID, "d": False})
            return
        connection.session = session
        self.current = session
        after = int(data.get("seq") or 0)
        # Replay by index: dispatches made during the replay are appended to the log and sent here, in order;
        # the socket becomes the session's only once the replay has caught up (no await in between).
        index = 0
        while index < len(session.log):
            seq, _event, frame = session.log[index]
            index += 1
            if seq > after:
                await connection.ws.send_str(frame)
        session.ws = connection.ws
        self.resume_count += 1
        await self._dispatch_to(session, "RESUMED", {})

    async def _dispatch_to(self, session: Session, event: str, data: Json) -> int:
        session.seq += 1
        frame = json.dumps({"op": DISPATCH, "t": event, "s": session.seq, "d": data})
        session.log.append((session.seq, event, frame))
        ws = session.ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(frame)
            except ConnectionError:
                log.debug("gateway send of %s failed; it will be replayed on RESUME", event)
        return session.seq

    async def dispatch(self, event: str, data: Json) -> int:
        """Send a dispatch (op 0) on the current session; while the client is away it is queued for the
        replay that follows its RESUME. Returns the sequence number."""
        if self.current is None:
            raise RuntimeError("no gateway session yet: start the bot and wait for READY first")
        return await self._dispatch_to(self.current, event, data)

    async def drop(self, *, resume: bool = True, code: int = 4000, abrupt: bool = False) -> None:
        """Close the client's socket. `resume=False` also forgets the session, so the client's RESUME gets
        op 9 (invalid session) and it IDENTIFYs again. `abrupt=True` cuts the TCP connection without a close
        frame (what the client sees as 1006)."""
        session = self.current
        if session is None or session.ws is None:
            raise RuntimeError("no connected gateway session to drop")
        ws = session.ws
        session.ws = None
        if not resume:
            session.valid = False
        connection = next(c for c in reversed(self.connections) if c.ws is ws)
        if abrupt:
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
            return
        await ws.close(code=code, message=b"dropped by the test")

    async def close(self) -> None:
        for connection in self.connections:
            if not connection.ws.closed:
                await connection.ws.close(code=1001, message=b"server shutting down")
