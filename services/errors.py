"""The one error tree of songbot.

Every failure that leaves ``services/`` is a :class:`SongbotError`. Each class knows the words a Discord member
should read (``user_message``); the cog only decides how to show them. Exception text (``str(exc)``) is for logs
and never contains a secret.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


def new_error_id() -> str:
    """A short id shown to the member and written in the log line, so the two can be matched."""
    return secrets.token_hex(4)


class SongbotError(Exception):
    """Root of every error songbot raises on purpose."""

    user_message: str = "Something went wrong while making your song."

    def __init__(self, message: str = "", *, user_message: str | None = None) -> None:
        super().__init__(message or self.user_message)
        if user_message is not None:
            self.user_message = user_message
        self.error_id = new_error_id()


class InvalidInput(SongbotError, ValueError):
    """Input a member can fix; the message is one sentence saying what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=message)


class ConfigError(SongbotError):
    """A missing or malformed setting; the message names the variable and what to put there."""


class CannotFit(SongbotError):
    """No encoding of the audio fits the size limit."""

    user_message = "The song is too large to upload here."


class SongTooLong(SongbotError):
    """The finished song is longer than the operator's cap (``SONGBOT_MAX_SONG_SECONDS``): it is not processed,
    since processing decodes the whole song into memory. Carries both lengths for the member's sentence."""

    user_message = "The finished song is too long for this bot to process."

    def __init__(self, message: str, *, duration_s: float, limit_s: float, request_id: str | None = None) -> None:
        super().__init__(message)
        self.duration_s = duration_s
        self.limit_s = limit_s
        self.request_id = request_id


class PolicyRefusal(SongbotError):
    """A moderator's or the operator's rule refused the request (before any cost)."""

    def __init__(self, reason: str, message: str, *, retry_at: float | None = None) -> None:
        super().__init__(message, user_message=message)
        self.reason = reason
        self.retry_at = retry_at


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
    user_message = "The music service failed to make this song. Please try again later."

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

    user_message = "The bot is misconfigured; the operator has been told in the log."


class ThrottledError(ServiceError):
    """The service is rate limiting us."""

    retryable = True
    user_message = "The music service is busy."

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ModerationError(ServiceError):
    """The text (or the song made from it) was rejected by content moderation."""

    user_message = "The music service's content moderation rejected this text. Please change it and try again."


class ParameterError(ServiceError):
    """DashScope refused the request's parameters."""

    user_message = "The music service refused this request's input. Please change it and try again."


class ServerError(ServiceError):
    """5xx from DashScope."""

    retryable = True
    user_message = "The music service had an internal error. Please try again later."


class ConnectionFailed(ServiceError):
    """Could not connect, or the connection dropped."""

    retryable = True
    user_message = "Could not reach the music service. Please try again later."


class BrokenStream(ServiceError):
    """The stream ended without ``finish_reason: "stop"`` or carried data we cannot use."""

    retryable = True
    user_message = "The music service stopped sending the song part-way. Please try again."


class ServiceTimeout(ServiceError):
    """Idle read timeout or total deadline exceeded."""

    retryable = True
    user_message = "The song took too long to make. Please try again later."


class DownloadError(ServiceError):
    """Fetching the finished audio from its URL failed (host not allowed, too large, 404, timeout)."""

    user_message = "The finished song could not be downloaded from the music service."
