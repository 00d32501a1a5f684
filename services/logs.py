"""Logging set-up for the entry point: one format, noisy libraries turned down, secrets redacted.

Only ``bot.py`` calls :func:`setup_logging`; modules just use ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

REDACTED = "[REDACTED]"


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


def setup_logging(level: str, secrets: Iterable[str], *, handler: logging.Handler | None = None) -> logging.Handler:
    """Configure the root logger once. Returns the handler (tests attach their own to capture output)."""
    handler = handler or logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    # discord.webhook logs webhook urls, which hold interaction tokens, at DEBUG: never below WARNING
    for noisy in ("discord.http", "discord.gateway", "discord.webhook", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler
