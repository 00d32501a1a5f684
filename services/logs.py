"""Logging set-up for the entry point: plain text or JSON lines, noisy libraries turned down, secrets redacted.

Only ``bot.py`` calls :func:`setup_logging`; modules just use ``logging.getLogger(__name__)``. Context that a log
reader filters by (the job, the server, DashScope's request id, the error id a member was shown) travels two ways:
``with log_context(job_id=…, guild_id=…)`` around a job's work (a :class:`~contextvars.ContextVar`, so every line
logged inside that task carries it, whichever module logs it), or ``extra={"error_id": …}`` on one call. The JSON
format writes them as fields; the plain format leaves lines as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

REDACTED = "[REDACTED]"
LOG_FORMATS = ("plain", "json")
LogFormat = Literal["plain", "json"]
# The fields a JSON line may carry besides time, level, logger and message; nothing else from ``extra`` is written.
CONTEXT_FIELDS = ("job_id", "guild_id", "request_id", "error_id")

_context: ContextVar[dict[str, Any] | None] = ContextVar("songbot_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` (names from :data:`CONTEXT_FIELDS`; ``None`` values are skipped) to every record logged
    inside the block, in this task and the tasks it starts."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {sorted(unknown)}")
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add fields to the current context for the rest of this task (e.g. the request id once DashScope sent it)."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {sorted(unknown)}")
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields of one record: the task's context, overridden by the call's own ``extra``."""
    fields = dict(_context.get() or {})
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the context fields
    that are set, and ``exc`` with the traceback text when there is one. Runs after :class:`RedactingFilter`, so
    the message and traceback it writes are already scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class RedactingFilter(logging.Filter):
    """Replaces every known secret in a record's final message (and its traceback text) with ``[REDACTED]``.

    A handler-level filter, so records from every logger (discord.py, aiohttp, ours) pass through it.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        scrubbed = self._scrub(message)
        if scrubbed != message:
            record.msg = scrubbed
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True


def setup_logging(
    level: str, secrets: Iterable[str], *, handler: logging.Handler | None = None, log_format: LogFormat = "plain"
) -> logging.Handler:
    """Configure the root logger once. Returns the handler (tests attach their own to capture output)."""
    handler = handler or logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    # discord.webhook logs webhook urls, which hold interaction tokens, at DEBUG: never below WARNING
    for noisy in ("discord.http", "discord.gateway", "discord.webhook", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler
