"""The grammar under the sentences a member reads: the one plural helper every message uses, lists and cutting.

The sentences themselves are ``cogs/_words.py``'s, which uses these (and offers them to the other cogs).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"entry": "entries", "reply": "replies", "person": "people"}


def clip(text: str, limit: int, tail: str = "…") -> str:
    """At most ``limit`` characters; a cut text ends with ``tail``. Never leaves half of a markdown escape."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - len(tail))].rstrip()
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]  # an odd trailing backslash would escape the tail (or the markup after it)
    return cut + tail


def shown(value: object, limit: int = 60) -> str:
    """A value a member typed, quoted for an error sentence and never longer than ``limit``."""
    return clip(repr(value), limit)


def plural_of(noun: str) -> str:
    """``song`` → ``songs``, ``entry`` → ``entries`` (only the nouns songbot shows)."""
    return _IRREGULAR.get(noun, noun + "s")


def plural(count: float, noun: str, many: str | None = None) -> str:
    """``1 song``, ``0 songs``, ``2 minutes``, ``1.5 minutes``; ``many`` overrides the plural form.

    A fractional count is shown with one decimal at most (``2.5``, ``1``); only exactly one is singular."""
    text = str(count) if isinstance(count, int) else f"{count:.1f}".rstrip("0").rstrip(".")
    return f"{text} {noun if text == '1' else (many or plural_of(noun))}"


def listing(items: Sequence[str], shown: int, noun: str = "") -> str:
    """``a, b, c`` or, past ``shown`` items, ``a, b, c and 7 more`` (``and 7 more channels`` with ``noun``).

    Whatever the list's length, the text stays as long as ``shown`` items plus a count."""
    head = ", ".join(items[:shown])
    rest = len(items) - shown
    if rest <= 0:
        return head
    if not noun:
        return f"{head} and {rest} more"
    return f"{head} and {rest} more {noun if rest == 1 else plural_of(noun)}"
