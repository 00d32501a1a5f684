"""``python bot.py demo``: the real bot, unchanged, against the offline Discord and the Fun-Music simulator, in one
process, with no token, no key and no network.

A moderator sets a daily limit, a member asks for a song with a prompt and one with lyrics (through the form),
another presses Cancel on theirs, and the first member then hits the limit. The terminal shows the conversation as
members would see it (the defer, each progress line, the result with its buttons, the refusal); the delivered
files (song, lyrics, waveform) are written to ``demo-out/``.

The bot is made by the caller (``bot.py`` passes its ``SongBot``), so this module never imports the entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from services.offline.discord import FakeDiscord, FakeUser, StoredMessage, point_discord_py_at
from services.offline.payloads import MODERATOR_PERMISSIONS
from services.offline.simulator import FunMusicSimulator, Scenario
from services.settings import Settings, load_settings

DEMO_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.demo00.offline-demo-token-not-a-real-discord-token"
DEMO_KEY = "sk-demo-simulator-key"


def demo_scenario(song_seconds: float) -> Scenario:
    """Songs streamed at about the pace of the real service (a few seconds per song here), so progress shows."""
    return Scenario(duration_s=song_seconds, chunk_bytes=8192, chunk_delay_s=0.12)


SETTLED_MARKS = ("✅", "❌", "🛑", "🎵")


class DemoBot(Protocol):
    async def start(self, token: str) -> None: ...

    async def wait_until_ready(self) -> None: ...

    async def close(self) -> None: ...

    def is_closed(self) -> bool: ...


@dataclass
class _Seen:
    """What the narrator last printed of one message."""

    text: str = ""


@dataclass
class Narrator:
    """Prints what members see, as it changes: one line per new message or edit, with its buttons and files."""

    fake: FakeDiscord
    out: TextIO
    started: float = field(default_factory=time.monotonic)
    seen: dict[int, _Seen] = field(default_factory=dict)
    callbacks: set[int] = field(default_factory=set)

    def say(self, who: str, text: str) -> None:
        stamp = time.monotonic() - self.started
        self.out.write(f"[{stamp:5.1f}s] {who:>5} {text}\n")
        self.out.flush()

    def poll(self) -> None:
        for interaction_id, record in list(self.fake.state.interactions.items()):
            callback = record.callback
            if callback is None or interaction_id in self.callbacks:
                continue
            self.callbacks.add(interaction_id)
            if callback.type == 5:
                private = " (only they see it)" if callback.data.get("flags", 0) & 64 else ""
                self.say("bot", f"… is thinking{private}")
            elif callback.type == 9:
                self.say("bot", f"opens a form: “{callback.data.get('title', '')}”")
        for message in sorted(self.fake.state.messages.values(), key=lambda m: m.id):
            self._show(message)

    def _show(self, message: StoredMessage) -> None:
        if message.loading:
            return
        text = plain(describe(message), self.fake)
        seen = self.seen.setdefault(message.id, _Seen())
        if text == seen.text:
            return
        verb = "edits:" if seen.text else "says:"
        seen.text = text
        self.say("bot", f"{verb} {text}")


def describe(message: StoredMessage) -> str:
    """One line: the message's text (first line, or the embed's title), then its files and buttons."""
    if message.deleted:
        return "(deleted)"
    lines = [line for line in (message.content or "").splitlines() if line.strip()]
    head = lines[0] if lines else ""
    if not head and message.embeds:
        head = str(message.embeds[0].get("title") or message.embeds[0].get("description") or "")
    parts = [head[:140]]
    if message.ephemeral:
        parts.append("(only they see it)")
    if message.attachments:
        files = ", ".join(f"{a.filename} ({_size(a.size)})" for a in message.attachments)
        parts.append(f"📎 {files}")
    labels = [str(c.get("label")) for c in message.all_components() if c.get("type") == 2 and c.get("label")]
    if labels:
        parts.append(" ".join(f"[{label}]" for label in labels))
    return "  ".join(part for part in parts if part)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.0f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


_TIMESTAMP = re.compile(r"<t:(\d+)(?::[tTdDfFR])?>")
_USER = re.compile(r"<@!?(\d+)>")
_CHANNEL = re.compile(r"<#(\d+)>")


def _relative(epoch_s: int) -> str:
    seconds = epoch_s - time.time()
    minutes = abs(seconds) / 60
    amount = f"{minutes:.0f} minutes" if minutes < 90 else f"{minutes / 60:.0f} hours"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def plain(text: str, fake: FakeDiscord) -> str:
    """Discord markup as the client would render it: timestamps, user and channel mentions."""
    text = _TIMESTAMP.sub(lambda m: _relative(int(m.group(1))), text)
    users = fake.state.users
    text = _USER.sub(lambda m: "@" + (users[int(m.group(1))].username if int(m.group(1)) in users else "someone"), text)
    channel_names = {c.id: c.name for g in fake.state.guilds.values() for c in g.channels}
    return _CHANNEL.sub(lambda m: "#" + channel_names.get(int(m.group(1)), "channel"), text)


@dataclass
class Demo:
    fake: FakeDiscord
    narrator: Narrator
    out_dir: Path
    saved: list[Path] = field(default_factory=list)

    async def _watch(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.narrator.poll()
            if done():
                self.narrator.poll()
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the demo waited too long for the bot")

    async def send(self, payload: dict[str, Any], who: str, what: str) -> int:
        self.narrator.say(who, what)
        record = await self.fake.send_interaction(payload)
        return int(record.id)

    def _final(self, interaction_id: int) -> StoredMessage | None:
        message = self.fake.original(interaction_id)
        followups = self.fake.followups(interaction_id)
        if followups:
            return followups[-1]
        if message is None or message.loading:
            return None
        if message.attachments or message.embeds or message.ephemeral:
            return message
        return message if message.content.startswith(SETTLED_MARKS) else None

    async def until_answered(self, interaction_id: int, timeout: float = 120.0) -> StoredMessage:
        await self._watch(lambda: self._final(interaction_id) is not None, timeout)
        final = self._final(interaction_id)
        assert final is not None
        return final

    async def until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        await self._watch(done, timeout)

    async def save_files(self, message: StoredMessage, prefix: str) -> None:
        for attachment in message.attachments:
            path = self.out_dir / f"{prefix}-{attachment.filename}"
            await asyncio.to_thread(path.write_bytes, attachment.data)
            self.saved.append(path)


async def _script(demo: Demo, member: FakeUser, other: FakeUser) -> None:
    fake = demo.fake
    iid = await demo.send(
        fake.slash("songconfig set", {"member_daily_songs": 2, "cooldown": 0}, permissions=MODERATOR_PERMISSIONS),
        "mod",
        "/songconfig set member_daily_songs:2 cooldown:0",
    )
    await demo.until_answered(iid)

    prompt = "a sea shanty about a flaky test that only fails on Fridays"
    iid = await demo.send(
        fake.slash("song", {"prompt": prompt}, user=member), member.username, f"/song prompt:{prompt}"
    )
    await demo.save_files(await demo.until_answered(iid), "1")

    iid = await demo.send(fake.slash("song", {}, user=member), member.username, "/song   (no options: the form)")
    await demo.until(lambda: fake.modal(iid) is not None)
    lyrics = (
        "[verse]\nThe build was green when I went home,\nthe night was calm, the tests were done,\n"
        "[chorus]\nOh merge it now, oh merge it true,\nthe pipeline sings the whole night through."
    )
    submit = fake.submit_modal(iid, {"Lyrics": lyrics})
    iid = await demo.send(
        submit, member.username, "fills in Lyrics: “The build was green when I went home, …” → Submit"
    )
    await demo.save_files(await demo.until_answered(iid), "2")

    iid = await demo.send(
        fake.slash("song", {"prompt": "a lullaby for a tired server"}, user=other),
        other.username,
        "/song prompt:a lullaby for a tired server",
    )
    await demo.until(lambda: _cancel_button(fake, iid) is not None)
    custom_id = _cancel_button(fake, iid)
    assert custom_id is not None
    await demo.send(fake.click(custom_id, user=other), other.username, "presses [Cancel]")
    await demo.until_answered(iid)

    iid = await demo.send(
        fake.slash("song", {"prompt": "one more, please"}, user=member),
        member.username,
        "/song prompt:one more, please",
    )
    await demo.until_answered(iid)


def _cancel_button(fake: FakeDiscord, interaction_id: int) -> str | None:
    message = fake.original(interaction_id)
    if message is None:
        return None
    for component in message.all_components():
        custom_id = str(component.get("custom_id") or "")
        if custom_id.startswith("song:cancel:"):
            return custom_id
    return None


def demo_settings(fake: FakeDiscord, sim_url: str, data_dir: Path, song_seconds: float) -> Settings:
    return load_settings(
        {
            "DISCORD_TOKEN": DEMO_TOKEN,
            "DASHSCOPE_API_KEY": DEMO_KEY,
            "DASHSCOPE_BASE_URL": sim_url,
            "DISCORD_API_BASE": fake.api_base,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'songbot.db'}",
            "SONGBOT_DATA_DIR": str(data_dir),
            "SONGBOT_ESTIMATED_SONG_SECONDS": str(max(1, round(song_seconds))),
            "LOG_LEVEL": "WARNING",
        }
    )


@contextlib.asynccontextmanager
async def _temporary_dir() -> AsyncIterator[Path]:
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="songbot-demo-"))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def run_demo(
    make_bot: Callable[[Settings], DemoBot],
    *,
    out_dir: Path,
    out: TextIO,
    song_seconds: float = 20.0,
    point_at_discord: Callable[[Settings], None] | None = None,
) -> list[Path]:
    """Run the scripted conversation; returns the files written to ``out_dir``."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    sim = FunMusicSimulator(api_key=DEMO_KEY, scenario=demo_scenario(song_seconds))
    sim_url = await sim.start()
    try:
        async with _temporary_dir() as data_dir, FakeDiscord(token=DEMO_TOKEN, guild_name="Songbot Demo") as fake:
            member, other = fake.add_user("ana"), fake.add_user("ben")
            settings = demo_settings(fake, sim_url, data_dir, song_seconds)
            demo = Demo(fake, Narrator(fake, out), out_dir)
            with point_discord_py_at(fake):
                if point_at_discord is not None:
                    point_at_discord(settings)
                await _converse(make_bot(settings), demo, member, other)
    finally:
        await sim.close()
    return demo.saved


async def _converse(bot: DemoBot, demo: Demo, member: FakeUser, other: FakeUser) -> None:
    task = asyncio.create_task(bot.start(DEMO_TOKEN))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        where = demo.fake.guild.name
        demo.narrator.say("demo", f"the bot is online in “{where}” (offline Discord, simulated music)")
        await _script(demo, member, other)
    finally:
        if not bot.is_closed():
            await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
