"""Turning outcomes into the words a member reads. No exception text ever reaches Discord: only these."""

from __future__ import annotations

import logging
import time

import discord

from cogs._limits import CONTENT, PREFIX_ROOM, fit_text
from services.errors import (
    AuthError,
    ModerationError,
    PolicyRefusal,
    ServiceTimeout,
    SongbotError,
    SongTooLong,
    ThrottledError,
)
from services.policy import GlobalUsage
from services.text import clip as clip
from services.text import listing as listing
from services.text import plural as plural

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
    elif isinstance(error, SongTooLong):
        text = (
            f"The finished song is {format_duration(error.duration_s)} long, over this bot's limit of "
            f"{format_duration(error.limit_s)}, so it could not be sent."
        )
    else:
        text = error.user_message
    suffix = f" (error id `{error.error_id}`)"
    return fit_text(text, CONTENT - PREFIX_ROOM - len(suffix)) + suffix


def refusal_text(refusal: PolicyRefusal) -> str:
    """Policy refusals carry their own sentence; a retry time becomes a relative Discord timestamp."""
    text = refusal.user_message
    if refusal.retry_at is not None and "{retry}" in text:
        text = text.replace("{retry}", relative(refusal.retry_at))
    elif refusal.retry_at is not None and "<t:" not in text:
        text = f"{text} Try again {relative(refusal.retry_at)}."
    return fit_text(text)


# --- the /song form and the Cancel / Regenerate buttons ---------------------------------------------------------

#: One answer for an unknown job and a job of another server (or another member's DMs): a forged id learns nothing.
SONG_NOT_HERE = "This button doesn't belong to a song I know here."
CANCEL_NOT_YOURS = "Only the member who asked for this song, or a moderator, can cancel it."
CANCEL_TOO_LATE = "This song can't be cancelled any more: it is already finishing."
REGENERATE_PRIVATE = "This song is private: only the member who asked for it can make it again."
REGENERATE_DELETED = "This song's request was deleted, so it can't be made again."
FORM_EMPTY = "Fill in a style prompt or lyrics (or both)."
FORM_OUTDATED = "This form is from an older version of the bot; run /song again."


def song_ended_text(status: str, *, jump_url: str | None = None, error_id: str | None = None) -> str:
    """What a Cancel press on a job that already ended says: how it ended (``status`` is the job's final one)."""
    if status == "delivered":
        where = f" ({jump_url})" if jump_url else ""
        return f"This song was already delivered{where}, so there is nothing to cancel."
    if status == "cancelled":
        return "This song was already cancelled, and its quota refunded."
    if status == "failed":
        code = f" (error id `{error_id}`)" if error_id else ""
        return f"This song already failed{code}, so there is nothing to cancel."
    return "This song was stopped when the bot restarted, and its quota refunded. Run /song to make it again."


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


# --- what a message says about the part of it that did not fit (see cogs/_limits.py) --------------------------


def older_songs_not_shown(count: int) -> str:
    return f"…and {plural(count, 'older song')} not shown."


def more_members(count: int) -> str:
    return f"…and {plural(count, 'more member')}."


def more_lyrics(count: int) -> str:
    return f"\n*…{plural(count, 'more line')} in lyrics.txt.*"


def download_link(url: str, expiry: str) -> str:
    return f"The song is too large to upload here: [download it]({url}){expiry}."


def download_in_title(expiry: str) -> str:
    """When a signed url is too long for a field, the embed's title links to the song instead."""
    return f"The song is too large to upload here: the title above links to it{expiry}."


# --- after a restart (bot.py's recovery) --------------------------------------------------------------------------

_STOPPED_BY_RESTART = "the bot restarted while your song was being made, so it was stopped and your quota refunded."


def interrupted_in_place() -> str:
    """The job's own progress message, edited (while its interaction token lives): no Cancel, no queue position."""
    return f"❌ {_STOPPED_BY_RESTART[0].upper()}{_STOPPED_BY_RESTART[1:]} Please run `/song` again."


def interrupted_in_channel(user_id: int) -> str:
    """Posted in the job's channel when its message can no longer be edited; pings only the requester."""
    return f"<@{user_id}> {_STOPPED_BY_RESTART} Please run `/song` again."


def interrupted_by_dm() -> str:
    """A private song's notice goes to the member alone."""
    return (
        "The bot restarted while your private song was being made, so it was stopped and your quota refunded. "
        "Please run `/song` again."
    )
