"""What a server's moderators can set: names, types, ranges and defaults, all in code.

The database stores only overrides (``guild_settings`` rows); a server that never ran ``/songconfig`` uses the
defaults below, and changing a default here changes it for every server that did not override it. An unknown
name is a bug or a typo, never silently stored: :func:`validate_setting` refuses it with an
:class:`InvalidSetting` that ``cogs/_words.py`` turns into one sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from services.errors import InvalidInput

log = logging.getLogger(__name__)

Kind = Literal["bool", "int", "choice", "ids"]
#: What was wrong with a setting: no such name, not true/false, not a whole number, out of range, not one of the
#: choices, not a Discord id, not a list of ids, too many ids.
Problem = Literal["unknown", "bool", "int", "range", "choice", "id", "ids", "too_many"]

#: The most channels (or roles) a server can list; a longer list is a mistake, not a policy.
MAX_IDS = 100
#: Discord ids are positive 64-bit integers.
_MAX_SNOWFLAKE = 2**63 - 1

_TRUE = ("true", "yes", "on", "1", "enabled", "enable")
_FALSE = ("false", "no", "off", "0", "disabled", "disable")


@dataclass(frozen=True)
class SettingSpec:
    """One setting as ``/songconfig show`` lists it (``cogs/_words.py`` describes it and puts its range and values
    in words)."""

    name: str
    kind: Kind
    default: bool | int | str | tuple[int, ...]
    low: int = 0
    high: int = 0
    unit: str = ""  # singular ("second"); the plural comes from cogs/_words.py
    choices: tuple[str, ...] = ()


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("enabled", "bool", True),
    SettingSpec("cooldown", "int", 60, 0, 86400, "second"),
    SettingSpec("member_daily_songs", "int", 5, 0, 1000, "song"),
    SettingSpec("server_daily_songs", "int", 50, 0, 100000, "song"),
    SettingSpec("server_daily_minutes", "int", 120, 0, 100000, "minute"),
    SettingSpec("max_concurrent", "int", 2, 1, 20, "song"),
    SettingSpec("max_queued", "int", 25, 1, 1000, "song"),
    SettingSpec("default_voice", "choice", "female", choices=("female", "male")),
    SettingSpec("default_format", "choice", "mp3", choices=("mp3", "wav", "ogg")),
    SettingSpec("watermark", "choice", "member", choices=("always", "never", "member")),
    SettingSpec("private_allowed", "bool", True),
    SettingSpec("channels", "ids", (), unit="channel"),
    SettingSpec("roles", "ids", (), unit="role"),
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


def _log_text(name: str, problem: Problem, value: object) -> str:
    """The operator's log line for a refused setting (a member reads ``cogs/_words.py``'s sentence)."""
    if problem == "unknown":
        return f"no setting called {name!r}"
    s = SPECS[name]
    expected = {
        "int": f"between {s.low} and {s.high}",
        "range": f"between {s.low} and {s.high}",
        "bool": "true or false",
        "choice": f"one of {s.choices}",
        "too_many": f"at most {MAX_IDS} ids",
    }.get(problem, "a list of Discord ids")
    return f"{name} must be {expected}; got {value!r}"[:200]


class InvalidSetting(InvalidInput):
    """A setting's name or value refused: which setting, what was wrong and the value given (for ``too_many``,
    how many ids were given). The sentence naming the allowed range is ``cogs/_words.py``'s."""

    def __init__(self, name: str, problem: Problem, value: object) -> None:
        super().__init__(_log_text(name, problem, value))
        self.name = name
        self.problem = problem
        self.value = value


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
        raise InvalidSetting(name, "unknown", name) from None


def _bool(s: SettingSpec, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidSetting(s.name, "bool", value)


def _int(s: SettingSpec, value: object) -> int:
    number: int
    if isinstance(value, bool):
        raise InvalidSetting(s.name, "int", value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidSetting(s.name, "int", value)
    if not s.low <= number <= s.high:
        raise InvalidSetting(s.name, "range", number)
    return number


def _choice(s: SettingSpec, value: object) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in s.choices:
        raise InvalidSetting(s.name, "choice", value)
    assert isinstance(text, str)
    return text


def _id(s: SettingSpec, value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SNOWFLAKE:
        raise InvalidSetting(s.name, "id", value)
    return value


def _ids(s: SettingSpec, value: object) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidSetting(s.name, "ids", value)
    unique = tuple(dict.fromkeys(_id(s, item) for item in value))
    if len(unique) > MAX_IDS:
        raise InvalidSetting(s.name, "too_many", len(unique))
    return unique


def validate_setting(name: str, value: object) -> bool | int | str | tuple[int, ...]:
    """Parse and check one setting's value (a Python value or the text a moderator typed).

    Returns the normalised value; raises :class:`InvalidSetting` (a member reads e.g. ``cooldown must be between 0
    and 86400 seconds; got 90000.``)
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
        except InvalidSetting as exc:
            log.warning("ignoring stored value of %s, using the default: %s", name, exc)
    return replace(DEFAULTS, **valid)
