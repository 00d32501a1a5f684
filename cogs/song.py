"""``/song``: the command, its modal, and its Cancel and Regenerate buttons. Only Discord concerns live here.

Order of one request: local checks (no I/O) → lyrics file read (bounded) → request validation → can the bot post
here later → policy (quota reserved atomically, job row created) → defer → the job manager runs it. Everything up
to the defer answers ephemerally and costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from cogs._delivery import DiscordJobObserver, SongContext
from cogs._words import (
    CANCEL_NOT_YOURS,
    CANCEL_TOO_LATE,
    FORM_EMPTY,
    FORM_OUTDATED,
    NO_PINGS,
    REGENERATE_DELETED,
    REGENERATE_PRIVATE,
    SONG_NOT_HERE,
    failure_text,
    refusal_text,
    song_ended_text,
)
from services.audio import Tags
from services.errors import InvalidInput, PolicyRefusal, SongbotError
from services.funmusic.request import GenerationRequest, clean_text
from services.guild_settings import GuildSettings
from services.jobs import JobSpec
from services.policy import RefusalReason, RequestContext
from services.store import JobRecord

if TYPE_CHECKING:
    from bot import Services, SongBot

log = logging.getLogger(__name__)

LYRICS_FILE_MAX_BYTES = 16 * 1024
LYRICS_FILE_SUFFIXES = (".txt", ".lrc")
PROMPT_OPTION_MAX = 1000
FORMAT_CHOICES = ("mp3", "wav", "ogg")
#: Songs one member may have queued or generating at once, so one member cannot fill the shared queue.
MAX_JOBS_PER_MEMBER = 2
#: More /song requests than this being checked at once is a burst: each further one defers before its checks.
BURST_CHECKS = 1
LYRICS_FILE_TIMEOUT_S = 1.5
#: matched one line at a time, at a fixed position: linear in the file's length whatever it holds
_LRC_TIMESTAMP = re.compile(r"\[\d{1,2}:\d{2}(?:[.:]\d{1,3})?\]")
_LRC_META = re.compile(r"\[(?:ar|ti|al|by|offset|length|re|ve):[^\]]*\]", re.IGNORECASE)


@dataclass(frozen=True)
class SongOptions:
    """What the member asked for, before guild defaults are applied."""

    prompt: str | None = None
    lyrics: str | None = None
    voice: str | None = None
    format: str | None = None
    instrumental: bool = False
    watermark: bool | None = None
    private: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "lyrics": self.lyrics,
            "voice": self.voice,
            "format": self.format,
            "instrumental": self.instrumental,
            "watermark": self.watermark,
            "private": self.private,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SongOptions:
        return cls(**{key: data.get(key) for key in cls().to_json()})  # type: ignore[arg-type]


def lrc_to_lyrics(text: str) -> str:
    """An .lrc file's timestamps and tags are not lyrics: strip them.

    Line by line: a tag line (``[ar:…]``) becomes empty and the timestamps that open a line go. Each pattern is
    tried only at one place in one line, so the work is linear in the file (a 16 KiB file of newlines and
    brackets cannot make it quadratic on the event loop).
    """
    lines: list[str] = []
    for line in text.splitlines():
        body = line.strip()
        if _LRC_META.fullmatch(body):
            lines.append("")
            continue
        pos = len(line) - len(line.lstrip())
        while match := _LRC_TIMESTAMP.match(line, pos):
            pos = match.end()
        lines.append(line[pos:] if pos else line)
    return "\n".join(lines)


def check_lyrics_attachment(attachment: discord.Attachment) -> None:
    """Checks that need no download: name and size. Raises InvalidInput."""
    name = attachment.filename.lower()
    if not name.endswith(LYRICS_FILE_SUFFIXES):
        raise InvalidInput("The lyrics file must be a .txt or .lrc text file.")
    if attachment.size > LYRICS_FILE_MAX_BYTES:
        raise InvalidInput(f"The lyrics file must be at most 16 KiB; yours is {attachment.size / 1024:.1f} KiB.")
    if attachment.size == 0:
        raise InvalidInput("The lyrics file is empty; put your lyrics in it.")


def decode_lyrics_file(data: bytes, filename: str) -> str:
    if len(data) > LYRICS_FILE_MAX_BYTES:
        raise InvalidInput(f"The lyrics file must be at most 16 KiB; yours is {len(data) / 1024:.1f} KiB.")
    if b"\x00" in data:
        raise InvalidInput("The lyrics file looks binary; upload a plain UTF-8 text file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The lyrics file is not UTF-8 text; save it as UTF-8 and upload it again.") from None
    if filename.lower().endswith(".lrc"):
        text = lrc_to_lyrics(text)
    text = clean_text(text)
    if not text:
        raise InvalidInput("The lyrics file is empty; put your lyrics in it.")
    return text


async def _read_up_to(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes when it is longer. (``content.read(n)`` returns what has
    arrived so far: a file sent in several writes would be cut short.)"""
    data = bytearray()
    async for chunk in resp.content.iter_any():
        data += chunk[: limit - len(data)]
        if len(data) >= limit:
            break
    return bytes(data)


async def read_lyrics_attachment(attachment: discord.Attachment, session: aiohttp.ClientSession) -> str:
    check_lyrics_attachment(attachment)
    try:
        async with asyncio.timeout(LYRICS_FILE_TIMEOUT_S):
            async with session.get(attachment.url) as resp:
                if resp.status != 200:
                    raise InvalidInput("Discord would not give me the lyrics file; please upload it again.")
                data = await _read_up_to(resp, LYRICS_FILE_MAX_BYTES + 1)
    except (TimeoutError, aiohttp.ClientError):
        raise InvalidInput("I could not read the lyrics file in time; please try again.") from None
    return decode_lyrics_file(data, attachment.filename)


def member_role_ids(user: discord.User | discord.Member) -> list[int]:
    """The role ids from the interaction's member payload: the source of truth, even for roles the guild cache
    has not seen yet (``Member.roles`` silently drops those)."""
    raw = getattr(user, "_roles", None)
    if raw is not None:
        return [int(role_id) for role_id in raw]
    return [role.id for role in getattr(user, "roles", [])]


def is_manager(interaction: discord.Interaction) -> bool:
    """Manage Server (or Administrator) in the interaction's server; nobody manages anything in DMs."""
    perms = interaction.permissions
    return interaction.guild_id is not None and bool(perms.manage_guild or perms.administrator)


def can_post_later(interaction: discord.Interaction) -> bool:
    """Could the bot post the song with its own token once the interaction token expires (after 15 minutes)?"""
    perms = interaction.app_permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    send = perms.send_messages_in_threads if in_thread else perms.send_messages
    return bool(perms.view_channel and send and perms.attach_files and perms.embed_links)


def title_for(options: SongOptions) -> str:
    if options.prompt:
        return options.prompt.splitlines()[0][:100]
    if options.lyrics:
        return options.lyrics.strip().splitlines()[0].strip("[] ")[:100] or "Your song"
    return "Your song"


def resolve(options: SongOptions, guild: GuildSettings, model: str) -> tuple[GenerationRequest, str, bool]:
    """Apply the server's defaults and rules to the member's options. Returns (request, wanted format, private)."""
    if options.private and not guild.private_allowed:
        raise InvalidInput("Private songs are turned off in this server; run /song without `private`.")
    want_format = options.format or guild.default_format
    if want_format not in FORMAT_CHOICES:  # discord.py does not check a submitted value against the choices
        raise InvalidInput("Format must be mp3, wav or ogg.")
    if guild.watermark == "always":
        watermark = True
    elif guild.watermark == "never":
        watermark = False
    else:
        watermark = bool(options.watermark)
    request = GenerationRequest(
        prompt=options.prompt,
        lyrics=options.lyrics,
        is_instrumental=options.instrumental,
        gender=options.voice or guild.default_voice,
        format="wav" if want_format in ("wav", "ogg") else "mp3",
        watermark=watermark,
        model=model,
    )
    validated, _mode = request.validated()
    return validated, want_format, options.private


ButtonAction = Literal["cancel", "regenerate"]


def belongs_here(job: JobRecord, interaction: discord.Interaction) -> bool:
    """Is the job one this press may see? In a server: a job of that server. In DMs (where a private or a
    fallback song is delivered): a job of the member whose DMs these are."""
    if interaction.guild_id is None:
        return job.user_id == interaction.user.id
    return job.guild_id == interaction.guild_id


def button_refusal(action: ButtonAction, job: JobRecord | None, interaction: discord.Interaction) -> str | None:
    """Why this press may not act on ``job`` (None: it may). The job id in a custom id is only a claim: a forged or
    replayed press can name any job, so the job is checked against where and by whom it was pressed."""
    if job is None or not belongs_here(job, interaction):
        return SONG_NOT_HERE
    owner = interaction.user.id == job.user_id
    if action == "cancel" and not owner and not is_manager(interaction):
        return CANCEL_NOT_YOURS
    if action == "regenerate" and not owner and job.options.get("private"):
        return REGENERATE_PRIVATE
    return None


class _JobButton:
    """What Cancel and Regenerate share. ``interaction_check`` loads the job and refuses (ephemerally) a press that
    may not act on it; ``callback`` acts. An error in either reaches the member as an error id, never as
    "interaction failed" (discord.py only logs what a dynamic item raises)."""

    action: ButtonAction
    job_id: int
    job: JobRecord | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        try:
            cog = _song_cog(interaction)
            self.job = await cog.services.store.get_job(self.job_id)
            refusal = button_refusal(self.action, self.job, interaction)
            if refusal is None:
                return True
            await cog._refuse(interaction, refusal)
        except Exception as exc:
            await report_unexpected(interaction, exc)
        return False

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            cog = _song_cog(interaction)
            assert self.job is not None  # interaction_check loaded it
            if self.action == "cancel":
                await cog.cancel_clicked(interaction, self.job)
            else:
                await cog.regenerate_clicked(interaction, self.job)
        except Exception as exc:
            await report_unexpected(interaction, exc)


class CancelButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"song:cancel:(?P<job>\d+)"
):
    """Cancel, usable by the requester or a member with Manage Server in the job's server; survives restarts."""

    action: ButtonAction = "cancel"

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"song:cancel:{job_id}")
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelButton:
        return cls(int(match["job"]))


class RegenerateButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"song:regen:(?P<job>\d+)"
):
    """Make the song again for whoever presses (their quota, their cooldown); a private song only for its owner.
    Works after a restart."""

    action: ButtonAction = "regenerate"

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Regenerate", emoji="🔁", style=discord.ButtonStyle.secondary, custom_id=f"song:regen:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenerateButton:
        return cls(int(match["job"]))


def _song_cog(interaction: discord.Interaction) -> SongCog:
    cog = interaction.client.get_cog("SongCog")  # type: ignore[attr-defined]
    assert isinstance(cog, SongCog)
    return cog


# --- the /song form -------------------------------------------------------------------------------------------------

FORM_PREFIX = "song:form:"
#: The form's text inputs; a submit carrying one of them is the /song form, whatever its custom id.
PROMPT_INPUT, LYRICS_INPUT = "song:prompt", "song:lyrics"
_FORM_ID = re.compile(
    r"song:form:v=(?P<voice>[fm-]):f=(?P<format>mp3|wav|ogg|-):i=(?P<instrumental>[01])"
    r":w=(?P<watermark>[01-]):p=(?P<private>[01])"
)
_VOICES = {"female": "f", "male": "m"}


def form_custom_id(options: SongOptions) -> str:
    """The /song form's custom id: the options chosen on /song, so a submit needs nothing the process kept (it is
    answered after a restart, or however late). At most 35 characters of Discord's 100. Raises InvalidInput for a
    voice or format the command does not offer (a forged option), before the form is shown."""
    if options.voice is not None and options.voice not in _VOICES:
        raise InvalidInput("Voice must be female or male.")
    if options.format is not None and options.format not in FORMAT_CHOICES:
        raise InvalidInput("Format must be mp3, wav or ogg.")
    voice = _VOICES[options.voice] if options.voice else "-"
    watermark = "-" if options.watermark is None else str(int(options.watermark))
    return (
        f"{FORM_PREFIX}v={voice}:f={options.format or '-'}:i={int(options.instrumental)}"
        f":w={watermark}:p={int(options.private)}"
    )


def options_from_form_id(custom_id: str) -> SongOptions | None:
    """The options a form's custom id carries; None for an id this version did not make."""
    match = _FORM_ID.fullmatch(custom_id)
    if match is None:
        return None
    voices = {short: name for name, short in _VOICES.items()}
    return SongOptions(
        voice=voices.get(match["voice"]),
        format=None if match["format"] == "-" else match["format"],
        instrumental=match["instrumental"] == "1",
        watermark=None if match["watermark"] == "-" else match["watermark"] == "1",
        private=match["private"] == "1",
    )


def submitted_values(components: list[Any]) -> dict[str, str]:
    """{text input custom id: value} from a modal submit's components, in either form Discord sends (a Label's
    ``component``, or an action row's ``components``)."""
    values: dict[str, str] = {}
    for component in components:
        if not isinstance(component, dict):
            continue
        if "custom_id" in component and "value" in component:
            values[str(component["custom_id"])] = str(component["value"] or "")
        nested = list(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            nested.append(component["component"])
        values.update(submitted_values(nested))
    return values


class SongModal(discord.ui.Modal, title="Make a song"):
    """The /song form, for lyrics with [verse]/[chorus] lines, which a slash option cannot hold.

    Only its shape: its custom id carries the options chosen on /song, and it is stopped before it is sent, so
    discord.py never holds it and no timeout can drop it. Every submit, after a restart or hours late, is answered
    by ``SongCog.on_interaction`` from the submitted data alone."""

    def __init__(self, options: SongOptions) -> None:
        super().__init__(timeout=None, custom_id=form_custom_id(options))
        self.prompt_input: discord.ui.TextInput[SongModal] = discord.ui.TextInput(
            style=discord.TextStyle.short, required=False, max_length=PROMPT_OPTION_MAX, custom_id=PROMPT_INPUT
        )
        self.lyrics_input: discord.ui.TextInput[SongModal] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, required=False, max_length=4000, custom_id=LYRICS_INPUT
        )
        self.add_item(
            discord.ui.Label(
                text="Style / prompt",
                description="e.g. upbeat summer folk, acoustic guitar",
                component=self.prompt_input,
            )
        )
        self.add_item(
            discord.ui.Label(
                text="Lyrics", description="Optional. Use [verse], [chorus] lines.", component=self.lyrics_input
            )
        )
        self.stop()  # a finished modal is not stored by send_modal: the submit goes to the listener only


class Responder:
    """Answers one /song interaction exactly once, and never late.

    Refusals are best as an immediate ephemeral message (they cost nothing and only the member sees them), but the
    checks before them read and write the database, which under a burst can take longer than Discord's 3 s. So a
    guard defers by itself once ``defer_after_s`` has passed; a refusal after that replaces the "thinking…"
    message with an ephemeral follow-up. A lock keeps the guard and the checks from both answering (40060).
    """

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        ephemeral: bool,
        defer_after_s: float,
        urgent: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.urgent = urgent
        self._on_close = on_close
        self._closed = False
        self._lock = asyncio.Lock()
        self._guard = asyncio.create_task(self._defer_when_slow(defer_after_s))

    async def defer_if_urgent(self) -> None:
        """Under a burst, answer first and check after: the checks of many requests share one event loop."""
        if self.urgent:
            try:
                await self.defer()
            except discord.HTTPException as exc:
                log.warning("could not defer interaction %s: %s", self.interaction.id, exc)

    async def _defer_when_slow(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            # shielded: cancelling the guard must never cut a defer in flight (it would be sent but not recorded)
            await asyncio.shield(self.defer())
        except discord.HTTPException as exc:
            log.warning("could not defer interaction %s early: %s", self.interaction.id, exc)

    async def defer(self) -> None:
        """Defer ("thinking…") unless already answered. Raises HTTPException if Discord refuses."""
        async with self._lock:
            if not self.interaction.response.is_done():
                await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)

    async def refuse(self, text: str) -> None:
        self.close()
        async with self._lock:
            response = self.interaction.response
            if not response.is_done():
                await response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
                return
            try:
                if self.ephemeral:
                    await self.interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
                    return
                await self.interaction.delete_original_response()
            except discord.HTTPException as exc:
                log.warning("could not replace the deferred answer of %s: %s", self.interaction.id, exc)
            await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)

    def close(self) -> None:
        self._guard.cancel()
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


class SongCog(commands.Cog):
    def __init__(self, bot: SongBot) -> None:
        self.bot = bot
        self._checking = 0

    @property
    def services(self) -> Services:
        return self.bot.services

    # --- /song ---------------------------------------------------------------------------------------------------
    @app_commands.command(name="song", description="Make a song with vocals from a style prompt or your own lyrics.")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="Style and subject, e.g. 'upbeat summer folk song about a road trip' (leave empty for a form)",
        voice="Singing voice (default: the server's)",
        format="Audio format (default: the server's)",
        instrumental="No vocals",
        watermark="Append the audible AI watermark (if the server lets members choose)",
        lyrics_file="Your lyrics as a .txt or .lrc file (UTF-8, at most 16 KiB)",
        private="Only you see the result",
    )
    async def song(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_OPTION_MAX] | None = None,
        voice: Literal["female", "male"] | None = None,
        format: Literal["mp3", "wav", "ogg"] | None = None,
        instrumental: bool = False,
        watermark: bool | None = None,
        lyrics_file: discord.Attachment | None = None,
        private: bool = False,
    ) -> None:
        options = SongOptions(
            prompt=prompt,
            voice=voice,
            format=format,
            instrumental=instrumental,
            watermark=watermark,
            private=private,
        )
        if interaction.guild_id is None:
            await self._refuse(interaction, "Use /song in a server, not in DMs.")
            return
        if prompt is not None and len(prompt) > PROMPT_OPTION_MAX:
            await self._refuse(
                interaction,
                f"The prompt must be at most {PROMPT_OPTION_MAX:,} characters; yours has {len(prompt):,}. "
                "For long lyrics run /song with no options to get a form, or attach a lyrics file.",
            )
            return
        if not (prompt and prompt.strip()) and lyrics_file is None:
            try:
                modal = SongModal(options)
            except InvalidInput as exc:
                await self._refuse(interaction, exc.user_message)
                return
            await interaction.response.send_modal(modal)
            return
        responder = self.responder(interaction, options)
        try:
            if lyrics_file is not None:
                await responder.defer_if_urgent()
                try:
                    lyrics = await read_lyrics_attachment(lyrics_file, self.services.session)
                except InvalidInput as exc:
                    await responder.refuse(exc.user_message)
                    return
                options = replace(options, lyrics=lyrics)
            await self.start_song(interaction, options, responder)
        finally:
            responder.close()

    def responder(self, interaction: discord.Interaction, options: SongOptions) -> Responder:
        """One per request being checked; past ``BURST_CHECKS`` at once, requests defer before their checks."""
        self._checking += 1

        def closed() -> None:
            self._checking -= 1

        return Responder(
            interaction,
            ephemeral=options.private,
            defer_after_s=self.services.settings.defer_after_s,
            urgent=self._checking > BURST_CHECKS,
            on_close=closed,
        )

    async def start_song(
        self, interaction: discord.Interaction, options: SongOptions, responder: Responder | None = None
    ) -> None:
        """Shared by /song, the modal and Regenerate: check, admit, defer, queue."""
        responder = responder or self.responder(interaction, options)
        try:
            await self._start_song(interaction, options, responder)
        finally:
            responder.close()

    async def _start_song(self, interaction: discord.Interaction, options: SongOptions, responder: Responder) -> None:
        services = self.services
        await responder.defer_if_urgent()
        if interaction.guild_id is None:
            await responder.refuse("Use /song in a server, not in DMs.")
            return
        guild_settings: GuildSettings = await services.store.get_guild_settings(interaction.guild_id)
        try:
            request, want_format, private = resolve(options, guild_settings, services.settings.fun_music_model)
        except InvalidInput as exc:
            await responder.refuse(exc.user_message)
            return
        # from here on the cleaned text (no control or zero-width characters): titles, file names, the job row
        options = replace(options, prompt=request.prompt, lyrics=request.lyrics)
        if not private and not can_post_later(interaction):
            await responder.refuse(
                "I can't post songs in this channel: give me View Channel, Send Messages, Embed Links and Attach "
                "Files here, or use /song in another channel (or with `private`).",
            )
            return
        user = interaction.user
        place = services.jobs.place(user.id)

        def queue_has_room() -> bool:
            """The policy's last step, inside its transaction: the member's share, then a place in the queue."""
            if services.jobs.in_progress(user.id) >= MAX_JOBS_PER_MEMBER:
                raise PolicyRefusal(
                    RefusalReason.QUEUE_FULL,
                    f"You already have {MAX_JOBS_PER_MEMBER} songs in progress; wait for one to finish (or cancel it).",
                )
            return place.queue_has_room()

        try:
            ctx = RequestContext(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                user_id=user.id,
                role_ids=member_role_ids(user),
                is_manager=is_manager(interaction),
                estimated_seconds=services.settings.estimated_song_seconds,
            )
            try:
                admission = await services.policy.admit(
                    ctx,
                    prompt=options.prompt,
                    lyrics=options.lyrics,
                    options={**options.to_json(), "want_format": want_format, "title": title_for(options)},
                    queue_has_room=queue_has_room,
                    interaction_token=interaction.token,  # a restart edits this message in place while it lives
                )
            except PolicyRefusal as refusal:
                await responder.refuse(refusal_text(refusal))
                return
            job_id: int = admission.job_id
            try:
                await responder.defer()
            except discord.HTTPException as exc:
                log.warning("job %s: could not defer (%s); refunding", job_id, exc)
                await services.policy.refund(job_id)
                await services.store.transition(job_id, "failed", error_code="defer")
                return
            song_ctx = SongContext(
                job_id=job_id,
                user_id=user.id,
                user_name=user.display_name,
                channel_id=interaction.channel_id or 0,
                guild_id=interaction.guild_id,
                request=request,
                want_format=want_format,
                private=private,
                title=title_for(options),
                max_bytes=interaction.filesize_limit,
            )
            observer = DiscordJobObserver(
                interaction, song_ctx, cancel_button=CancelButton, regenerate_button=RegenerateButton
            )
            spec = JobSpec(
                job_id=job_id,
                guild_id=interaction.guild_id,
                user_id=user.id,
                request=request,
                want_format=want_format,
                max_bytes=interaction.filesize_limit,
                tags=Tags(title=song_ctx.title, artist="songbot (Fun-Music)", lyrics=""),
                guild_limit=guild_settings.max_concurrent,
            )
            services.jobs.submit(spec, observer)
            log.info("job %s accepted for user %s in guild %s", job_id, user.id, interaction.guild_id)
        finally:
            place.release()

    async def _refuse(self, interaction: discord.Interaction, text: str) -> None:
        """An ephemeral answer that costs nothing; edits instead if the interaction was already answered."""
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)

    # --- the form -----------------------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Every /song form submit, from its data alone (see SongModal): nothing in memory, so none goes unanswered."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})  # type: ignore[arg-type]
        custom_id = str(data.get("custom_id", ""))
        values = submitted_values(list(data.get("components") or []))
        if not custom_id.startswith(FORM_PREFIX) and not {PROMPT_INPUT, LYRICS_INPUT} & values.keys():
            return  # not the /song form
        try:
            await self.form_submitted(interaction, custom_id, values)
        except Exception as exc:
            await report_unexpected(interaction, exc)

    async def form_submitted(self, interaction: discord.Interaction, custom_id: str, values: dict[str, str]) -> None:
        options = options_from_form_id(custom_id)
        if options is None:
            await self._refuse(interaction, FORM_OUTDATED)
            return
        prompt = values.get(PROMPT_INPUT, "").strip() or None
        lyrics = values.get(LYRICS_INPUT, "").strip() or None
        if not prompt and not lyrics:
            await self._refuse(interaction, FORM_EMPTY)
            return
        await self.start_song(interaction, replace(options, prompt=prompt, lyrics=lyrics))

    # --- buttons (checked in _JobButton.interaction_check first) -------------------------------------------------
    async def cancel_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None:
        if job.status.terminal:
            await self._refuse(interaction, ended_text(job))
            return
        if not self.services.jobs.cancel(job.id, interaction.user.id):
            now = await self.services.store.get_job(job.id)  # it may have ended since the check
            await self._refuse(interaction, ended_text(now) if now and now.status.terminal else CANCEL_TOO_LATE)
            return
        await interaction.response.defer()

    async def regenerate_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None:
        if not (job.prompt or job.lyrics):
            await self._refuse(interaction, REGENERATE_DELETED)
            return
        # the presser's song: their quota, cooldown and share; private only if the owner made it private
        options = replace(SongOptions.from_json(dict(job.options)), prompt=job.prompt, lyrics=job.lyrics)
        await self.start_song(interaction, options)

    # --- errors --------------------------------------------------------------------------------------------------
    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        await report_unexpected(interaction, original)


def ended_text(job: JobRecord) -> str:
    return song_ended_text(str(job.status), jump_url=job.jump_url(), error_id=job.error_id)


async def report_unexpected(interaction: discord.Interaction, error: BaseException) -> None:
    """An error no handler expected, in /song, its form or its buttons: logged with an error id, and the member
    told in words with the same id (never "interaction failed")."""
    wrapped = error if isinstance(error, SongbotError) else SongbotError("unexpected")
    log.error(
        "unexpected error in /song [error %s]", wrapped.error_id, exc_info=error, extra={"error_id": wrapped.error_id}
    )
    text = failure_text(wrapped)
    response = interaction.response
    try:
        if not response.is_done():
            await response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
        elif response.type in (
            discord.InteractionResponseType.deferred_message_update,
            discord.InteractionResponseType.message_update,
        ):
            # a button press acknowledged in place: its original is the song's message, which must stay
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.edit_original_response(
                content=text, embed=None, attachments=[], view=None, allowed_mentions=NO_PINGS
            )
    except discord.HTTPException:
        log.warning("could not report error %s to the member", wrapped.error_id)


async def setup(bot: SongBot) -> None:
    bot.add_dynamic_items(CancelButton, RegenerateButton)
    await bot.add_cog(SongCog(bot))
