"""What a member asks ``/song`` for, before Discord or the service sees it: the options, the server's defaults and
rules applied to them (:func:`resolve`), and a lyrics file read and decoded (.txt or .lrc). Nothing here knows
Discord: the cog passes plain values (an attachment's url, name and size)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.errors import InvalidInput
from services.funmusic.request import GenerationRequest, clean_text
from services.guild_settings import GuildSettings

LYRICS_FILE_MAX_BYTES = 16 * 1024
LYRICS_FILE_SUFFIXES = (".txt", ".lrc")
LYRICS_FILE_TIMEOUT_S = 1.5
FORMAT_CHOICES = ("mp3", "wav", "ogg")
#: matched one line at a time, at a fixed position: linear in the file's length whatever it holds
_LRC_TIMESTAMP = re.compile(r"\[\d{1,2}:\d{2}(?:[.:]\d{1,3})?\]")
_LRC_META = re.compile(r"\[(?:ar|ti|al|by|offset|length|re|ve):[^\]]*\]", re.IGNORECASE)


@dataclass(frozen=True)
class SongOptions:
    """What the member asked for, before guild defaults are applied."""

    prompt: str | None = None
    lyrics: str | None = None
    voice: str | None = None
    format: str | None = None
    instrumental: bool = False
    watermark: bool | None = None
    private: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "lyrics": self.lyrics,
            "voice": self.voice,
            "format": self.format,
            "instrumental": self.instrumental,
            "watermark": self.watermark,
            "private": self.private,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SongOptions:
        return cls(**{key: data.get(key) for key in cls().to_json()})  # type: ignore[arg-type]


def title_for(options: SongOptions) -> str:
    if options.prompt:
        return options.prompt.splitlines()[0][:100]
    if options.lyrics:
        return options.lyrics.strip().splitlines()[0].strip("[] ")[:100] or "Your song"
    return "Your song"


def resolve(options: SongOptions, guild: GuildSettings, model: str) -> tuple[GenerationRequest, str, bool]:
    """Apply the server's defaults and rules to the member's options. Returns (request, wanted format, private)."""
    if options.private and not guild.private_allowed:
        raise InvalidInput("Private songs are turned off in this server; run /song without `private`.")
    want_format = options.format or guild.default_format
    if want_format not in FORMAT_CHOICES:  # discord.py does not check a submitted value against the choices
        raise InvalidInput("Format must be mp3, wav or ogg.")
    if guild.watermark == "always":
        watermark = True
    elif guild.watermark == "never":
        watermark = False
    else:
        watermark = bool(options.watermark)
    request = GenerationRequest(
        prompt=options.prompt,
        lyrics=options.lyrics,
        is_instrumental=options.instrumental,
        gender=options.voice or guild.default_voice,
        format="wav" if want_format in ("wav", "ogg") else "mp3",
        watermark=watermark,
        model=model,
    )
    validated, _mode = request.validated()
    return validated, want_format, options.private


# --- a lyrics file ----------------------------------------------------------------------------------------------


def lrc_to_lyrics(text: str) -> str:
    """An .lrc file's timestamps and tags are not lyrics: strip them.

    Line by line: a tag line (``[ar:…]``) becomes empty and the timestamps that open a line go. Each pattern is
    tried only at one place in one line, so the work is linear in the file (a 16 KiB file of newlines and
    brackets cannot make it quadratic on the event loop).
    """
    lines: list[str] = []
    for line in text.splitlines():
        body = line.strip()
        if _LRC_META.fullmatch(body):
            lines.append("")
            continue
        pos = len(line) - len(line.lstrip())
        while match := _LRC_TIMESTAMP.match(line, pos):
            pos = match.end()
        lines.append(line[pos:] if pos else line)
    return "\n".join(lines)


def check_lyrics_file(filename: str, size: int) -> None:
    """Checks that need no download: name and size. Raises InvalidInput."""
    name = filename.lower()
    if not name.endswith(LYRICS_FILE_SUFFIXES):
        raise InvalidInput("The lyrics file must be a .txt or .lrc text file.")
    if size > LYRICS_FILE_MAX_BYTES:
        raise InvalidInput(f"The lyrics file must be at most 16 KiB; yours is {size / 1024:.1f} KiB.")
    if size == 0:
        raise InvalidInput("The lyrics file is empty; put your lyrics in it.")


def decode_lyrics_file(data: bytes, filename: str) -> str:
    if len(data) > LYRICS_FILE_MAX_BYTES:
        raise InvalidInput(f"The lyrics file must be at most 16 KiB; yours is {len(data) / 1024:.1f} KiB.")
    if b"\x00" in data:
        raise InvalidInput("The lyrics file looks binary; upload a plain UTF-8 text file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The lyrics file is not UTF-8 text; save it as UTF-8 and upload it again.") from None
    if filename.lower().endswith(".lrc"):
        text = lrc_to_lyrics(text)
    text = clean_text(text)
    if not text:
        raise InvalidInput("The lyrics file is empty; put your lyrics in it.")
    return text


async def _read_up_to(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes when it is longer. (``content.read(n)`` returns what has
    arrived so far: a file sent in several writes would be cut short.)"""
    data = bytearray()
    async for chunk in resp.content.iter_any():
        data += chunk[: limit - len(data)]
        if len(data) >= limit:
            break
    return bytes(data)


async def read_lyrics_file(session: aiohttp.ClientSession, url: str, filename: str, size: int) -> str:
    """The lyrics of an uploaded file (its url, name and announced size): checked, fetched (bounded in bytes and
    time) and decoded. Raises InvalidInput."""
    check_lyrics_file(filename, size)
    try:
        async with asyncio.timeout(LYRICS_FILE_TIMEOUT_S):
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise InvalidInput("Discord would not give me the lyrics file; please upload it again.")
                data = await _read_up_to(resp, LYRICS_FILE_MAX_BYTES + 1)
    except (TimeoutError, aiohttp.ClientError):
        raise InvalidInput("I could not read the lyrics file in time; please try again.") from None
    return decode_lyrics_file(data, filename)
