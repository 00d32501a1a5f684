"""Discord's size limits, and the small toolkit every message builder uses to stay within them by construction.

A message over a limit is refused whole (400, code 50035 "Invalid Form Body"), so a builder never hopes: it
escapes first (escaping can double a text), then cuts at whole lines, and says what it left out ("and 12 more").
:func:`fit_embed` is the last step of every embed builder, so even a mistake upstream cannot produce a 400.
Limits: discord-api-docs ``resources/message.mdx`` (content, embeds) and ``components/reference.mdx`` (labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import discord

from cogs._text import clip

CONTENT = 2000
EMBEDS = 10
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR = 256
#: Title, description, field names and values, footer and author of all embeds of one message together.
EMBED_TOTAL = 6000
BUTTON_LABEL = 80
#: Room kept for a prefix added after a text was built (an emoji, or ``<@id> `` when it goes to the channel).
PREFIX_ROOM = 40

ELLIPSIS = "…"


def escape(text: str) -> str:
    """Member text shown as typed: markdown escaped (which can double its length), on one line."""
    return discord.utils.escape_markdown(" ".join(text.split()))


def escaped(text: str, limit: int) -> str:
    """Escape first, then cut: the result is at most ``limit`` characters however much escaping added."""
    return clip(escape(text), limit)


def fit_lines(
    lines: Sequence[str],
    limit: int,
    *,
    more: Callable[[int], str] | None = None,
    short: Sequence[str] | None = None,
) -> str:
    """Whole lines joined by newlines, at most ``limit`` characters.

    ``short`` (one per line, optional) is a shorter form of each line, used where the full one does not leave
    room for the rest: the first lines keep their full form as long as every later line still fits short. Lines
    that fit in neither form are left out and ``more(n)`` ("and 3 more songs") says how many. A single line
    longer than ``limit`` is cut.
    """
    shorts = list(short) if short is not None else list(lines)
    if len(shorts) != len(lines):
        raise ValueError("short must have one entry per line")
    count = len(lines)
    kept: list[str] = []
    used = -1  # no newline before the first line

    def room_for(text: str, reserve: int) -> bool:
        return used + 1 + len(text) + reserve <= limit

    index = 0
    while index < count:  # everything still fits: full lines while the rest fit short
        rest = sum(len(s) + 1 for s in shorts[index + 1 :])
        if room_for(lines[index], rest):
            kept.append(lines[index])
        elif room_for(shorts[index], rest):
            kept.append(shorts[index])
        else:
            break
        used += 1 + len(kept[-1])
        index += 1
    while index < count:  # not everything fits: short lines while room is left for "and N more"
        after = count - index - 1
        tail = more(after) if more is not None and after else ""
        if not room_for(shorts[index], len(tail) + 1 if tail else 0):
            break
        kept.append(shorts[index])
        used += 1 + len(kept[-1])
        index += 1
    if index < count:
        if kept:
            tail = more(count - index) if more is not None else ""
        else:  # not even the first line fits: cut it
            tail = more(count - 1) if more is not None and count > 1 else ""
            kept.append(clip(lines[0], limit - len(tail) - 1 if tail else limit))
        if tail:
            kept.append(tail)
    return clip("\n".join(kept), limit)


def fit_text(text: str, limit: int = CONTENT - PREFIX_ROOM) -> str:
    """Any message text within ``limit``, cut at whole lines (a long single line is cut with "…")."""
    if len(text) <= limit:
        return text
    lines = text.split("\n")
    return fit_lines(lines, limit, more=lambda n: ELLIPSIS)


def _text_length(embed: discord.Embed) -> int:
    total = len(embed.title or "") + len(embed.description or "")
    total += len(embed.footer.text or "") + len(embed.author.name or "")
    return total + sum(len(f.name or "") + len(f.value or "") for f in embed.fields)


def fit_embed(embed: discord.Embed, total: int = EMBED_TOTAL) -> discord.Embed:
    """The embed within every per-part limit and the ``total``: parts are cut at whole lines; when the whole is
    still too long the description gives way first, then the last fields. Returns the same embed."""
    if embed.title:
        embed.title = clip(embed.title, EMBED_TITLE)
    if embed.description:
        embed.description = fit_text(embed.description, EMBED_DESCRIPTION)
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, FOOTER), icon_url=embed.footer.icon_url)
    if embed.author.name:
        embed.set_author(name=clip(embed.author.name, AUTHOR), url=embed.author.url, icon_url=embed.author.icon_url)
    while len(embed.fields) > EMBED_FIELDS:
        embed.remove_field(-1)
    for index, item in enumerate(embed.fields):
        embed.set_field_at(
            index,
            name=clip(item.name or ELLIPSIS, FIELD_NAME),
            value=fit_text(item.value or ELLIPSIS, FIELD_VALUE),
            inline=bool(item.inline),
        )
    excess = _text_length(embed) - total
    if excess > 0 and embed.description:
        keep = max(0, len(embed.description) - excess)
        embed.description = fit_text(embed.description, keep) if keep > len(ELLIPSIS) else None
    while _text_length(embed) > total and embed.fields:
        embed.remove_field(-1)
    return embed
