"""The one error tree of songbot.

Every failure that leaves ``services/`` is a :class:`SongbotError`. Each class has a one-line ``summary`` for the
operator (the CLI's error line); what a Discord member reads is ``cogs/_words.py``'s, chosen by the error's class
from the data it carries. Exception text (``str(exc)``) is for logs and never contains a secret.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


def new_error_id() -> str:
    """A short id shown to the member and written in the log line, so the two can be matched."""
    return secrets.token_hex(4)


class SongbotError(Exception):
    """Root of every error songbot raises on purpose."""

    summary: str = "Something went wrong while making your song."

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.summary)
        self.error_id = new_error_id()


class InvalidInput(SongbotError, ValueError):
    """Input a member (or the CLI's user) can fix; the message is one sentence saying what to change, and
    ``user_message`` is that sentence."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class ConfigError(SongbotError):
    """A missing or malformed setting; the message names the variable and what to put there."""


class CannotFit(SongbotError):
    """No encoding of the audio fits the size limit."""

    summary = "The song is too large to upload here."


class SongTooLong(SongbotError):
    """The finished song is longer than the operator's cap (``SONGBOT_MAX_SONG_SECONDS``): it is not processed,
    since processing decodes the whole song into memory. Carries both lengths for the member's sentence."""

    summary = "The finished song is too long for this bot to process."

    def __init__(self, message: str, *, duration_s: float, limit_s: float, request_id: str | None = None) -> None:
        super().__init__(message)
        self.duration_s = duration_s
        self.limit_s = limit_s
        self.request_id = request_id


class PolicyRefusal(SongbotError):
    """A moderator's or the operator's rule refused the request (before any cost).

    It carries data, not words: ``reason`` (a ``RefusalReason``), ``retry_at`` (epoch seconds when the refusal ends
    by itself), ``limit`` (the rule's number: songs, minutes or queued songs), ``left`` and ``needed`` (seconds of
    music), ``ids`` (the channels or roles allowed) and ``direct`` (asked in direct messages).
    ``cogs/_words.py`` turns it into the member's sentence. ``message`` is only for a refusal decided in a cog,
    which already holds its sentence there.
    """

    def __init__(
        self,
        reason: str,
        message: str = "",
        *,
        retry_at: float | None = None,
        limit: int | None = None,
        left: int | None = None,
        needed: int | None = None,
        ids: tuple[int, ...] = (),
        direct: bool = False,
    ) -> None:
        super().__init__(message or f"refused: {reason}")
        self.reason = reason
        self.message = message
        self.retry_at = retry_at
        self.limit = limit
        self.left = left
        self.needed = needed
        self.ids = ids
        self.direct = direct


@dataclass(frozen=True)
class ErrorBody:
    """DashScope's error JSON: ``{code, message, request_id}``."""

    code: str
    message: str
    request_id: str | None
    status: int | None


class ServiceError(SongbotError):
    """An error from DashScope (or on the way to it). Keeps the code and request id."""

    retryable: bool = False
    summary = "The music service failed to make this song. Please try again later."

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        audio_delivered: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.audio_delivered = audio_delivered

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.code:
            parts.append(f"code={self.code}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class AuthError(ServiceError):
    """Bad key, no access, arrears: the operator must act."""

    summary = "The bot is misconfigured; the operator has been told in the log."


class ThrottledError(ServiceError):
    """The service is rate limiting us."""

    retryable = True
    summary = "The music service is busy."

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ModerationError(ServiceError):
    """The text (or the song made from it) was rejected by content moderation."""

    summary = "The music service's content moderation rejected this text. Please change it and try again."


class ParameterError(ServiceError):
    """DashScope refused the request's parameters."""

    summary = "The music service refused this request's input. Please change it and try again."


class ServerError(ServiceError):
    """5xx from DashScope."""

    retryable = True
    summary = "The music service had an internal error. Please try again later."


class ConnectionFailed(ServiceError):
    """Could not connect, or the connection dropped."""

    retryable = True
    summary = "Could not reach the music service. Please try again later."


class BrokenStream(ServiceError):
    """The stream ended without ``finish_reason: "stop"`` or carried data we cannot use."""

    retryable = True
    summary = "The music service stopped sending the song part-way. Please try again."


class ServiceTimeout(ServiceError):
    """Idle read timeout or total deadline exceeded."""

    retryable = True
    summary = "The song took too long to make. Please try again later."


class DownloadError(ServiceError):
    """Fetching the finished audio from its URL failed (host not allowed, too large, 404, timeout)."""

    summary = "The finished song could not be downloaded from the music service."
