"""Turning outcomes into the words a member reads. No exception text ever reaches Discord: only these."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import discord

from cogs._limits import CONTENT, PREFIX_ROOM, fit_text
from cogs._text import clip as clip
from cogs._text import listing as listing
from cogs._text import plural as plural
from cogs._text import plural_of, shown
from services.errors import (
    AuthError,
    BrokenStream,
    CannotFit,
    ConnectionFailed,
    DownloadError,
    InvalidInput,
    ModerationError,
    ParameterError,
    PolicyRefusal,
    ServerError,
    ServiceError,
    ServiceTimeout,
    SongbotError,
    SongTooLong,
    ThrottledError,
)
from services.ffmpeg import FfmpegError
from services.guild_settings import MAX_IDS, SPECS, InvalidSetting, SettingSpec
from services.jobs import DeliveryFailed, ShuttingDown
from services.policy import GlobalUsage, RefusalReason
from services.store import JobRecord

log = logging.getLogger(__name__)

#: How many channel or role mentions a refusal lists before "and N more".
REFUSAL_MENTIONS = 5

#: Every message that repeats user text: nobody is pinged but (where asked) the requester.
NO_PINGS = discord.AllowedMentions(everyone=False, roles=False, users=False, replied_user=False)


def mention_only(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False)


def relative(epoch_s: float) -> str:
    """A Discord timestamp that each member's client shows as "in 5 minutes"."""
    return f"<t:{int(epoch_s)}:R>"


def failure_text(error: SongbotError) -> str:
    """One or two sentences for the member, always ending with the error id that is also in the log line."""
    if isinstance(error, AuthError):
        log.error(
            "operator action needed [error %s]: DashScope refused the API key or account (%s)", error.error_id, error
        )
    if isinstance(error, InvalidInput):
        text = input_text(error)
    elif isinstance(error, PolicyRefusal):
        text = _refusal_words(error)
    else:
        template = next(FAILURES[cls] for cls in type(error).__mro__ if cls in FAILURES)
        text = template.format(**_failure_fields(error))
    suffix = f" (error id `{error.error_id}`)"
    return fit_text(text, CONTENT - PREFIX_ROOM - len(suffix)) + suffix


#: What a member reads when their song fails, by the error's class (the nearest one listed, in its MRO).
FAILURES: dict[type[SongbotError], str] = {
    SongbotError: "Something went wrong while making your song.",
    CannotFit: "The song is too large to upload here.",
    SongTooLong: "The finished song is {duration} long, over this bot's limit of {limit}, so it could not be sent.",
    ShuttingDown: "The bot is restarting, so your song was stopped and your quota refunded. Please try again soon.",
    DeliveryFailed: "Your song was made but could not be posted here.",
    FfmpegError: "The song could not be processed.",
    ServiceError: "The music service failed to make this song. Please try again later.",
    AuthError: "The bot is misconfigured; the operator has been told in the log.",
    ThrottledError: "The music service is busy right now; try again {retry}.",
    ModerationError: "The music service's moderation rejected this text. Change the prompt or lyrics and try again.",
    ParameterError: "The music service refused this request's input. Please change it and try again.",
    ServerError: "The music service had an internal error. Please try again later.",
    ConnectionFailed: "Could not reach the music service. Please try again later.",
    BrokenStream: "The music service stopped sending the song part-way. Please try again.",
    ServiceTimeout: "The song took too long to make, so it was stopped. Please try again later.",
    DownloadError: "The finished song could not be downloaded from the music service.",
}


def _failure_fields(error: SongbotError) -> dict[str, str]:
    if isinstance(error, ThrottledError):
        return {"retry": relative(time.time() + (error.retry_after or 60.0))}
    if isinstance(error, SongTooLong):
        return {"duration": format_duration(error.duration_s), "limit": format_duration(error.limit_s)}
    return {}


def refusal_text(refusal: PolicyRefusal) -> str:
    """The member's sentence for a refusal: its template in :data:`REFUSALS`, filled from the refusal's data. A
    refusal decided in a cog brings its own sentence."""
    return fit_text(_refusal_words(refusal))


def _refusal_words(refusal: PolicyRefusal) -> str:
    if refusal.message:
        return refusal.message
    return REFUSALS[_refusal_key(refusal)].format(**_refusal_fields(refusal))


#: One sentence per refusal (``services/policy.py``'s reasons, some in two variants), with named placeholders.
REFUSALS: dict[str, str] = {
    "disabled": "Song making is turned off in this server.",
    "channel": "Songs can't be made in this channel; use {channels}.",
    "role": "Making songs here needs one of these roles: {roles}.",
    "cooldown": "You're on cooldown: you can make your next song {retry}.",
    "member_quota": "You've reached your daily limit of {limit_songs} in this server; it resets {retry}.",
    "member_quota_dm": "You've reached your daily limit of {limit_songs} in direct messages; it resets {retry}.",
    "server_songs": "This server has reached its daily limit of {limit_songs}; it resets {retry}.",
    "server_minutes": "This server has only {left} of its daily {limit_minutes} of music left, not enough for this "
    "song (about {needed}); it resets {retry}.",
    "server_minutes_used": "This server has used its {limit_minutes} of music for today; it resets {retry}.",
    "global_budget": "The bot has only {left} of music left for today across all servers, not enough for this song "
    "(about {needed}); it resets {retry}.",
    "global_budget_used": "The bot has used its music budget for today across all servers; it resets {retry}.",
    "queue_full": "The song queue is full right now; try again {retry}.",
    "queue_full_server": "This server already has {limit} songs waiting in the queue; try again {retry}.",
    "member_busy": "You already have {limit_songs} in progress; wait for one to finish (or cancel it).",
}


def _refusal_key(refusal: PolicyRefusal) -> str:
    """Which of :data:`REFUSALS` says this refusal."""
    reason = RefusalReason(refusal.reason)
    if reason is RefusalReason.MEMBER_QUOTA and refusal.direct:
        return "member_quota_dm"
    if reason in (RefusalReason.SERVER_MINUTES, RefusalReason.GLOBAL_BUDGET) and not refusal.left:
        return f"{reason}_used"
    if reason is RefusalReason.QUEUE_FULL and refusal.limit is not None:
        return "queue_full_server"
    return str(reason)


def _refusal_fields(refusal: PolicyRefusal) -> dict[str, object]:
    limit = refusal.limit or 0
    return {
        "channels": listing(channel_mentions(refusal.ids), REFUSAL_MENTIONS),
        "roles": listing(role_mentions(refusal.ids), REFUSAL_MENTIONS),
        "retry": relative(refusal.retry_at) if refusal.retry_at is not None else "",
        "limit": limit,
        "limit_songs": plural(limit, "song"),
        "limit_minutes": plural(limit, "minute"),
        "left": _amount_of_music(refusal.left or 0),
        "needed": _amount_of_music(refusal.needed or 0),
    }


def _amount_of_music(seconds: int) -> str:
    """``45 seconds``, ``1 minute``, ``2.5 minutes``."""
    if seconds < 60:
        return plural(seconds, "second")
    return plural(seconds / 60, "minute")


def channel_mentions(ids: Iterable[int]) -> list[str]:
    return [f"<#{i}>" for i in ids]


def role_mentions(ids: Iterable[int]) -> list[str]:
    return [f"<@&{i}>" for i in ids]


# --- /songconfig: a setting's range, its value, and what was wrong with a value ---------------------------------

#: How many mentions a setting's value shows before "and 55 more": a value's text stays short however long the list.
SHOWN_IDS = 5


#: What each setting does, as /songconfig show and the options of /songconfig set say it.
SETTING_DESCRIPTIONS: dict[str, str] = {
    "enabled": "Whether members can make songs in this server at all.",
    "cooldown": "Seconds a member waits between songs.",
    "member_daily_songs": "Songs each member can make per UTC day.",
    "server_daily_songs": "Songs the whole server can make per UTC day.",
    "server_daily_minutes": "Minutes of music the server can make per UTC day.",
    "max_concurrent": "Songs this server can have generating at once.",
    "max_queued": "Songs this server can have waiting in the queue at once.",
    "default_voice": "Voice used when a member doesn't pick one.",
    "default_format": "Audio format used when a member doesn't pick one.",
    "watermark": "Whether songs carry the service's audio watermark: always, never, or the member's choice.",
    "private_allowed": "Whether members may ask for their song privately (by DM).",
    "channels": "Channels where /song works; empty means every channel.",
    "roles": "Roles allowed to use /song; empty means everyone (members with Manage Server are always allowed).",
}


def setting_description(spec: SettingSpec) -> str:
    return SETTING_DESCRIPTIONS[spec.name]


def setting_allowed(spec: SettingSpec) -> str:
    """The allowed values in words, e.g. ``0–86400 seconds`` or ``female, male``."""
    if spec.kind == "bool":
        return "true or false"
    if spec.kind == "int":
        return f"{spec.low}–{spec.high}{' ' + plural_of(spec.unit) if spec.unit else ''}"
    if spec.kind == "choice":
        return ", ".join(spec.choices)
    return f"up to {plural(MAX_IDS, spec.unit)}; empty means all"


def setting_amount(spec: SettingSpec, number: int) -> str:
    """``1 second``, ``60 seconds``: a number in this setting's unit."""
    return plural(number, spec.unit) if spec.unit else str(number)


def setting_mentions(spec: SettingSpec, ids: Iterable[int]) -> list[str]:
    return channel_mentions(ids) if spec.name == "channels" else role_mentions(ids)


def setting_value(spec: SettingSpec, value: object) -> str:
    """A value as a moderator reads it (``true``, ``60 seconds``, ``mp3``, ``<#1>, <#2>`` / ``all``).

    A list is summarised past :data:`SHOWN_IDS` entries (``60 channels: <#1>, … and 55 more``), so the text
    is short whatever the value."""
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind == "int":
        assert isinstance(value, int)
        return setting_amount(spec, value)
    if spec.kind == "choice":
        return str(value)
    assert isinstance(value, tuple)
    if not value:
        return "all"
    if len(value) <= SHOWN_IDS:
        return ", ".join(setting_mentions(spec, value))
    return f"{plural(len(value), spec.unit)}: {listing(setting_mentions(spec, value), SHOWN_IDS)}"


def setting_error_text(error: InvalidSetting) -> str:
    """One sentence naming the allowed values, e.g. ``cooldown must be between 0 and 86400 seconds; got 90000.``"""
    name, value = error.name, error.value
    if error.problem == "unknown":
        return f"There is no setting called {name!r}; settings are: {', '.join(SPECS)}."
    spec = SPECS[name]
    if error.problem == "bool":
        return f"{name} must be true or false; got {shown(value)}."
    highest = setting_amount(spec, spec.high)
    if error.problem == "int":
        return f"{name} must be a whole number between {spec.low} and {highest}; got {shown(value)}."
    if error.problem == "range":
        return f"{name} must be between {spec.low} and {highest}; got {shown(value)}."
    if error.problem == "choice":
        return f"{name} must be one of {', '.join(spec.choices)}; got {shown(value)}."
    if error.problem == "id":
        return f"{name} must list Discord ids (positive whole numbers); got {shown(value)}."
    if error.problem == "ids":
        return f"{name} must be a list of Discord ids; got {shown(value)}."
    return f"{name} can list at most {plural(MAX_IDS, spec.unit)}; got {value}."


def input_text(error: InvalidInput) -> str:
    """What a member reads for input they can fix."""
    if isinstance(error, InvalidSetting):
        return setting_error_text(error)
    return error.user_message


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


def jump_url(job: JobRecord) -> str | None:
    """A link to the job's result message, when one was posted."""
    if job.message_id is None:
        return None
    guild = job.guild_id if job.guild_id is not None else "@me"
    return f"https://discord.com/channels/{guild}/{job.channel_id}/{job.message_id}"


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


# --- /song: its checks, its buttons, its progress and its last word ---------------------------------------------

NOT_IN_DMS = "Use /song in a server, not in DMs."
CANNOT_POST_HERE = (
    "I can't post songs in this channel: give me View Channel, Send Messages, Embed Links and Attach "
    "Files here, or use /song in another channel (or with `private`)."
)
BAD_VOICE = "Voice must be female or male."
BAD_FORMAT = "Format must be mp3, wav or ogg."
CANCEL_LABEL = "Cancel"
FORM_TITLE = "Make a song"
FORM_PROMPT_LABEL = "Style / prompt"
FORM_PROMPT_HINT = "e.g. upbeat summer folk, acoustic guitar"
FORM_LYRICS_LABEL = "Lyrics"
FORM_LYRICS_HINT = "Optional. Use [verse], [chorus] lines."
REGENERATE_LABEL = "Regenerate"
UPLOADING = "📤 Uploading…"


def prompt_too_long(limit: int, length: int) -> str:
    return (
        f"The prompt must be at most {limit:,} characters; yours has {length:,}. "
        "For long lyrics run /song with no options to get a form, or attach a lyrics file."
    )


def queued_line(position: int) -> str:
    ahead = "you're next" if position <= 1 else f"{plural(position - 1, 'song')} ahead of yours"
    return f"⏳ Queued — position {position} ({ahead})."


def generating_line(seconds_received: float | None, attempt: int) -> str:
    """``seconds_received`` None: nothing has arrived yet."""
    text = (
        "🎼 Generating your song…"
        if seconds_received is None
        else (f"🎼 Generating… {seconds_received:.0f} s of audio received.")
    )
    return text + (f" (attempt {attempt})" if attempt > 1 else "")


def preparing_line(audio_format: str) -> str:
    return f"🎚️ Preparing your {audio_format.upper()} file…"


def failed_line(error: SongbotError) -> str:
    return f"❌ {failure_text(error)}"


def cancelled_line(by_user_id: int | None, owner_id: int) -> str:
    who = "you" if by_user_id in (None, owner_id) else f"<@{by_user_id}>"
    return f"🛑 Cancelled by {who}. Your quota was refunded."


def requested_by(user_name: str, job_id: int) -> str:
    return clip(f"Requested by {user_name} · job {job_id}", 200)
