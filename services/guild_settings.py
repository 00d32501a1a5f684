"""What a server's moderators can set: names, types, ranges and defaults, all in code.

The database stores only overrides (``guild_settings`` rows); a server that never ran ``/songconfig`` uses the
defaults below, and changing a default here changes it for every server that did not override it. An unknown
name is a bug or a typo, never silently stored: :func:`validate_setting` refuses it with one sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from services.errors import InvalidInput
from services.text import listing, plural, plural_of, shown

log = logging.getLogger(__name__)

Kind = Literal["bool", "int", "choice", "ids"]

#: The most channels (or roles) a server can list; a longer list is a mistake, not a policy.
MAX_IDS = 100
#: How many mentions a setting's value shows before "and 55 more": a value's text stays short however long the list.
SHOWN_IDS = 5
#: Discord ids are positive 64-bit integers.
_MAX_SNOWFLAKE = 2**63 - 1

_TRUE = ("true", "yes", "on", "1", "enabled", "enable")
_FALSE = ("false", "no", "off", "0", "disabled", "disable")


@dataclass(frozen=True)
class SettingSpec:
    """One setting as ``/songconfig show`` lists it."""

    name: str
    kind: Kind
    default: bool | int | str | tuple[int, ...]
    description: str
    low: int = 0
    high: int = 0
    unit: str = ""  # singular ("second"); the plural comes from services.text
    choices: tuple[str, ...] = ()

    @property
    def allowed(self) -> str:
        """The allowed values in words, e.g. ``0–86400 seconds`` or ``female, male``."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            return f"{self.low}–{self.high}{' ' + plural_of(self.unit) if self.unit else ''}"
        if self.kind == "choice":
            return ", ".join(self.choices)
        return f"up to {plural(MAX_IDS, self.unit)}; empty means all"

    def amount(self, number: int) -> str:
        """``1 second``, ``60 seconds``: a number in this setting's unit."""
        return plural(number, self.unit) if self.unit else str(number)

    def mentions(self, ids: Iterable[int]) -> list[str]:
        mark = "#" if self.name == "channels" else "@&"
        return [f"<{mark}{i}>" for i in ids]

    def format(self, value: object) -> str:
        """A value as a moderator reads it (``true``, ``60 seconds``, ``mp3``, ``<#1>, <#2>`` / ``all``).

        A list is summarised past :data:`SHOWN_IDS` entries (``60 channels: <#1>, … and 55 more``), so the text
        is short whatever the value."""
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "int":
            assert isinstance(value, int)
            return self.amount(value)
        if self.kind == "choice":
            return str(value)
        assert isinstance(value, tuple)
        if not value:
            return "all"
        if len(value) <= SHOWN_IDS:
            return ", ".join(self.mentions(value))
        return f"{plural(len(value), self.unit)}: {listing(self.mentions(value), SHOWN_IDS)}"


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("enabled", "bool", True, "Whether members can make songs in this server at all."),
    SettingSpec("cooldown", "int", 60, "Seconds a member waits between songs.", 0, 86400, "second"),
    SettingSpec("member_daily_songs", "int", 5, "Songs each member can make per UTC day.", 0, 1000, "song"),
    SettingSpec("server_daily_songs", "int", 50, "Songs the whole server can make per UTC day.", 0, 100000, "song"),
    SettingSpec(
        "server_daily_minutes", "int", 120, "Minutes of music the server can make per UTC day.", 0, 100000, "minute"
    ),
    SettingSpec("max_concurrent", "int", 2, "Songs this server can have generating at once.", 1, 20, "song"),
    SettingSpec("max_queued", "int", 25, "Songs this server can have waiting in the queue at once.", 1, 1000, "song"),
    SettingSpec(
        "default_voice", "choice", "female", "Voice used when a member doesn't pick one.", choices=("female", "male")
    ),
    SettingSpec(
        "default_format",
        "choice",
        "mp3",
        "Audio format used when a member doesn't pick one.",
        choices=("mp3", "wav", "ogg"),
    ),
    SettingSpec(
        "watermark",
        "choice",
        "member",
        "Whether songs carry the service's audio watermark: always, never, or the member's choice.",
        choices=("always", "never", "member"),
    ),
    SettingSpec("private_allowed", "bool", True, "Whether members may ask for their song privately (by DM)."),
    SettingSpec("channels", "ids", (), "Channels where /song works; empty means every channel.", unit="channel"),
    SettingSpec(
        "roles",
        "ids",
        (),
        "Roles allowed to use /song; empty means everyone (members with Manage Server are always allowed).",
        unit="role",
    ),
)

SPECS: dict[str, SettingSpec] = {spec.name: spec for spec in SETTINGS}
#: The names ``/songconfig set`` accepts (channels and roles have their own subcommands).
SCALAR_NAMES: tuple[str, ...] = tuple(spec.name for spec in SETTINGS if spec.kind != "ids")


@dataclass(frozen=True)
class GuildSettings:
    """A server's effective settings: code defaults with its overrides applied."""

    enabled: bool = True
    cooldown: int = 60
    member_daily_songs: int = 5
    server_daily_songs: int = 50
    server_daily_minutes: int = 120
    max_concurrent: int = 2
    max_queued: int = 25
    default_voice: str = "female"
    default_format: str = "mp3"
    watermark: str = "member"
    private_allowed: bool = True
    channels: tuple[int, ...] = ()
    roles: tuple[int, ...] = ()

    def value(self, name: str) -> object:
        spec(name)
        return getattr(self, name)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_changes(self, changes: Mapping[str, object]) -> GuildSettings:
        """A copy with ``changes`` validated and applied."""
        valid: dict[str, Any] = {name: validate_setting(name, value) for name, value in changes.items()}
        return replace(self, **valid)

    def rows(self) -> list[tuple[SettingSpec, object, bool]]:
        """``(spec, value, is_default)`` for every setting, in display order (for ``/songconfig show``)."""
        return [(s, getattr(self, s.name), getattr(self, s.name) == s.default) for s in SETTINGS]


DEFAULTS = GuildSettings()


def _check_defaults() -> None:
    """The dataclass defaults and the spec table must agree; a mismatch is a bug caught at import."""
    for s in SETTINGS:
        if getattr(DEFAULTS, s.name) != s.default:
            raise AssertionError(f"default of {s.name} differs between GuildSettings and SETTINGS")
    if {f.name for f in fields(GuildSettings)} != set(SPECS):
        raise AssertionError("GuildSettings fields and SETTINGS names differ")


_check_defaults()


def spec(name: str) -> SettingSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise InvalidInput(f"There is no setting called {name!r}; settings are: {', '.join(SPECS)}.") from None


def _bool(s: SettingSpec, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidInput(f"{s.name} must be true or false; got {shown(value)}.")


def _int(s: SettingSpec, value: object) -> int:
    number: int
    if isinstance(value, bool):
        raise InvalidInput(f"{s.name} must be a whole number between {s.low} and {s.amount(s.high)}; got {value!r}.")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidInput(
            f"{s.name} must be a whole number between {s.low} and {s.amount(s.high)}; got {shown(value)}."
        )
    if not s.low <= number <= s.high:
        raise InvalidInput(f"{s.name} must be between {s.low} and {s.amount(s.high)}; got {shown(number)}.")
    return number


def _choice(s: SettingSpec, value: object) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in s.choices:
        raise InvalidInput(f"{s.name} must be one of {', '.join(s.choices)}; got {shown(value)}.")
    assert isinstance(text, str)
    return text


def _id(s: SettingSpec, value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SNOWFLAKE:
        raise InvalidInput(f"{s.name} must list Discord ids (positive whole numbers); got {shown(value)}.")
    return value


def _ids(s: SettingSpec, value: object) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput(f"{s.name} must be a list of Discord ids; got {shown(value)}.")
    unique = tuple(dict.fromkeys(_id(s, item) for item in value))
    if len(unique) > MAX_IDS:
        raise InvalidInput(f"{s.name} can list at most {plural(MAX_IDS, s.unit)}; got {len(unique)}.")
    return unique


def validate_setting(name: str, value: object) -> bool | int | str | tuple[int, ...]:
    """Parse and check one setting's value (a Python value or the text a moderator typed).

    Returns the normalised value; raises :class:`InvalidInput` with one sentence naming the allowed range,
    e.g. ``cooldown must be between 0 and 86400 seconds; got 90000.``
    """
    s = spec(name)
    if s.kind == "bool":
        return _bool(s, value)
    if s.kind == "int":
        return _int(s, value)
    if s.kind == "choice":
        return _choice(s, value)
    return _ids(s, value)


def from_overrides(overrides: Mapping[str, object]) -> GuildSettings:
    """Build settings from stored overrides. A stored value that no longer validates (a range was narrowed in a
    later release) or an unknown key (a setting was removed) falls back to the default instead of failing."""
    valid: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in SPECS:
            log.warning("ignoring stored setting %r: songbot no longer has it", name)
            continue
        try:
            valid[name] = validate_setting(name, value)
        except InvalidInput as exc:
            log.warning("ignoring stored value of %s, using the default: %s", name, exc)
    return replace(DEFAULTS, **valid)
