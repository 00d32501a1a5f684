"""The one typed settings object, read from the environment (and ``.env``) once at start and validated.

A missing or malformed value raises :class:`ConfigError` whose message is one plain sentence naming the variable
and what to put there. Secrets are kept in :class:`Secret`, whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from services.errors import ConfigError
from services.funmusic.request import MODELS
from services.logs import LOG_FORMATS, LogFormat

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Secret:
    """A string that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    discord_token: Secret
    dashscope_api_key: Secret
    dashscope_base_url: str = DEFAULT_BASE_URL
    fun_music_model: str = "fun-music-v1"
    simulate: bool = False
    log_level: str = "INFO"
    log_format: LogFormat = "plain"
    dev_guild_id: int | None = None
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    database_url: str = "sqlite+aiosqlite:///data/songbot.db"
    max_concurrent_generations: int = 2
    queue_size: int = 500  # songs waiting in this process, all servers together; each server has max_queued too
    global_daily_seconds: int | None = None
    estimated_song_seconds: int = 200
    defer_after_s: float = 0.15
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    total_deadline_s: float = 600.0
    download_max_bytes: int = 200 * 1024 * 1024
    max_song_seconds: int = 900
    requests_per_minute: int = 180
    data_dir: Path = field(default_factory=lambda: Path("data"))
    retention_days: int = 90
    health_port: int | None = None
    health_host: str = "127.0.0.1"

    @property
    def simulated(self) -> bool:
        """True when the bot talks to the built-in simulator instead of DashScope."""
        return self.simulate or not self.dashscope_api_key

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        return [s.reveal() for s in (self.discord_token, self.dashscope_api_key) if s]


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false); got {raw!r}.")


def _int(env: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number between {low} and {high}; got {raw!r}.") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}; got {value}.")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds between {low:g} and {high:g}; got {raw!r}.") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g} seconds; got {value:g}.")
    return value


def _url(env: Mapping[str, str], name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parsed = urlparse(raw)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise ConfigError(f"{name} must be a full {' or '.join(schemes)} URL such as {schemes[0]}://host/path.")
    return raw.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dashscope_base_url(env: Mapping[str, str]) -> str:
    """Plain http only to this machine (the simulator, tests): anywhere else it would send the API key in clear."""
    url = _url(env, "DASHSCOPE_BASE_URL", DEFAULT_BASE_URL, ("https", "http")) or DEFAULT_BASE_URL
    parsed = urlparse(url)
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname or ""):
        raise ConfigError(
            f"DASHSCOPE_BASE_URL must use https:// for {parsed.hostname}: plain http:// would send the API key "
            "in clear text (http is allowed only for localhost)."
        )
    return url


def _log_format(env: Mapping[str, str]) -> LogFormat:
    raw = env.get("LOG_FORMAT", "").strip().lower() or "plain"
    if raw == "json":
        return "json"
    if raw == "plain":
        return "plain"
    raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}; got {raw!r}.")


def _int_required(value: int | None) -> int:
    assert value is not None
    return value


def load_settings(env: Mapping[str, str] | None = None, *, require_discord: bool = True) -> Settings:
    """Build and validate the settings. ``require_discord=False`` for the ``generate`` CLI."""
    env = os.environ if env is None else env
    token = env.get("DISCORD_TOKEN", "").strip()
    if require_discord and not token:
        raise ConfigError(
            "DISCORD_TOKEN is not set: put your bot's token from the Discord Developer Portal in .env "
            "(see .env.example)."
        )
    model = env.get("FUN_MUSIC_MODEL", "").strip() or "fun-music-v1"
    if model not in MODELS:
        raise ConfigError(f"FUN_MUSIC_MODEL must be fun-music-v1 or fun-music-preview; got {model!r}.")
    level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}; got {level!r}.")
    log_format = _log_format(env)
    guild = _int(env, "DEV_GUILD_ID", None, 1, 2**63 - 1)
    database_url = env.get("DATABASE_URL", "").strip() or "sqlite+aiosqlite:///data/songbot.db"
    if not database_url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            "DATABASE_URL must start with sqlite+aiosqlite:/// or postgresql+asyncpg://; "
            f"got a URL starting with {database_url.split(':', 1)[0]!r}."
        )
    return Settings(
        discord_token=Secret(token),
        dashscope_api_key=Secret(env.get("DASHSCOPE_API_KEY", "").strip()),
        dashscope_base_url=_dashscope_base_url(env),
        fun_music_model=model,
        simulate=_bool(env, "SONGBOT_SIMULATE", False),
        log_level=level,
        log_format=log_format,
        dev_guild_id=guild,
        discord_api_base=_url(env, "DISCORD_API_BASE", None, ("http", "https")),
        discord_gateway_url=_url(env, "DISCORD_GATEWAY_URL", None, ("ws", "wss")),
        database_url=database_url,
        max_concurrent_generations=_int_required(_int(env, "MAX_CONCURRENT_GENERATIONS", 2, 1, 64)),
        queue_size=_int_required(_int(env, "SONGBOT_QUEUE_SIZE", 500, 1, 100_000)),
        global_daily_seconds=_int(env, "SONGBOT_GLOBAL_DAILY_SECONDS", None, 0, 10_000_000),
        defer_after_s=_float(env, "SONGBOT_DEFER_AFTER", 0.15, 0.0, 2.5),
        estimated_song_seconds=_int_required(_int(env, "SONGBOT_ESTIMATED_SONG_SECONDS", 200, 1, 3600)),
        max_retries=_int_required(_int(env, "SONGBOT_MAX_RETRIES", 3, 0, 10)),
        retry_backoff_s=_float(env, "SONGBOT_RETRY_BACKOFF", 1.0, 0.001, 60.0),
        connect_timeout_s=_float(env, "SONGBOT_CONNECT_TIMEOUT", 10.0, 0.1, 300.0),
        idle_timeout_s=_float(env, "SONGBOT_IDLE_TIMEOUT", 60.0, 0.1, 3600.0),
        total_deadline_s=_float(env, "SONGBOT_TOTAL_DEADLINE", 600.0, 1.0, 7200.0),
        download_max_bytes=_int_required(_int(env, "SONGBOT_DOWNLOAD_MAX_BYTES", 200 * 1024 * 1024, 1024, 2 * 1024**3)),
        max_song_seconds=_int_required(_int(env, "SONGBOT_MAX_SONG_SECONDS", 900, 1, 24 * 3600)),
        requests_per_minute=_int_required(_int(env, "SONGBOT_REQUESTS_PER_MINUTE", 180, 1, 10_000)),
        data_dir=Path(env.get("SONGBOT_DATA_DIR", "").strip() or "data"),
        retention_days=_int_required(_int(env, "SONGBOT_RETENTION_DAYS", 90, 0, 36500)),
        health_port=_int(env, "SONGBOT_HEALTH_PORT", None, 0, 65535),
        health_host=env.get("SONGBOT_HEALTH_HOST", "").strip() or "127.0.0.1",
    )
