"""Turning outcomes into the words a member reads. No exception text ever reaches Discord: only these."""

from __future__ import annotations

import logging
import time

import discord

from services.errors import (
    AuthError,
    ModerationError,
    PolicyRefusal,
    ServiceTimeout,
    SongbotError,
    ThrottledError,
)
from services.policy import GlobalUsage

log = logging.getLogger(__name__)

#: Every message that repeats user text: nobody is pinged but (where asked) the requester.
NO_PINGS = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=False)


def mention_only(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False)


def relative(epoch_s: float) -> str:
    """A Discord timestamp that each member's client shows as "in 5 minutes"."""
    return f"<t:{int(epoch_s)}:R>"


def failure_text(error: SongbotError) -> str:
    """One or two sentences for the member, always ending with the error id that is also in the log line."""
    if isinstance(error, ThrottledError):
        wait = error.retry_after if error.retry_after else 60.0
        text = f"The music service is busy right now; try again {relative(time.time() + wait)}."
    elif isinstance(error, AuthError):
        log.error(
            "operator action needed [error %s]: DashScope refused the API key or account (%s)", error.error_id, error
        )
        text = "The bot is misconfigured; the operator has been told in the log."
    elif isinstance(error, ModerationError):
        text = "The music service's moderation rejected this text. Change the prompt or lyrics and try again."
    elif isinstance(error, ServiceTimeout):
        text = "The song took too long to make, so it was stopped. Please try again later."
    else:
        text = error.user_message
    return f"{text} (error id `{error.error_id}`)"


def refusal_text(refusal: PolicyRefusal) -> str:
    """Policy refusals carry their own sentence; a retry time becomes a relative Discord timestamp."""
    text = refusal.user_message
    if refusal.retry_at is not None and "{retry}" in text:
        return text.replace("{retry}", relative(refusal.retry_at))
    if refusal.retry_at is not None and "<t:" not in text:
        return f"{text} Try again {relative(refusal.retry_at)}."
    return text


def link_text(url: str, expires_at: float | None) -> str:
    """The last way to hand over a song: its download link alone, when no upload got through."""
    expiry = f" (the link expires {relative(expires_at)})" if expires_at else ""
    return f"🎵 Your song is ready, but it could not be uploaded here: [download it]({url}){expiry}."


def global_usage_text(usage: GlobalUsage) -> str:
    """The operator's view of today across every server: what DashScope billed (the budget counts that) and what
    members received."""
    text = (
        f"Billed by DashScope: {format_duration(usage.billed_seconds)} of music (cancelled, failed and retried "
        f"songs included). Delivered: {usage.songs_used} song(s), {format_duration(usage.seconds_used)}."
    )
    if usage.seconds_limit is not None and usage.seconds_left is not None:
        text += f" Daily budget: {format_duration(usage.seconds_limit)}, {format_duration(usage.seconds_left)} left."
    return text


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def clip(text: str, limit: int, tail: str = "…") -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(tail))].rstrip() + tail
