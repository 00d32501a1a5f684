"""``/song``'s cog: the command, the form's submits and the buttons' presses, each turned into the same few steps.

Order of one request: local checks (no I/O) → lyrics file read (bounded) → request validation → can the bot post
here later → policy (quota reserved atomically, job row created) → defer → the job manager runs it. Everything up
to the defer answers ephemerally and costs nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import can_post_later, is_manager, member_role_ids
from cogs._words import (
    CANCEL_TOO_LATE,
    CANNOT_POST_HERE,
    FORM_EMPTY,
    FORM_OUTDATED,
    NO_PINGS,
    NOT_IN_DMS,
    REGENERATE_DELETED,
    prompt_too_long,
    refusal_text,
    song_ended_text,
)
from cogs.song._delivery import DiscordJobObserver, SongContext
from cogs.song._responder import BURST_CHECKS, Responder
from cogs.song._views import (
    FORM_PREFIX,
    LYRICS_INPUT,
    PROMPT_INPUT,
    PROMPT_OPTION_MAX,
    SongModal,
    options_from_form_id,
    report_unexpected,
    submitted_values,
)
from services.audio import Tags
from services.errors import InvalidInput, PolicyRefusal
from services.funmusic.request import GenerationRequest
from services.guild_settings import GuildSettings
from services.jobs import JobSpec, Place
from services.policy import RequestContext
from services.song_request import SongOptions, read_lyrics_file, resolve, title_for
from services.store import JobRecord, JobStatus

if TYPE_CHECKING:
    from bot import Services, SongBot

log = logging.getLogger("cogs.song")


@dataclass(frozen=True)
class _Checked:
    """A request that passed the checks before the policy: what admitting and running it need."""

    guild_id: int
    options: SongOptions  # the cleaned text
    request: GenerationRequest
    want_format: str
    private: bool
    guild_settings: GuildSettings


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
            await self.refuse(interaction, NOT_IN_DMS)
            return
        if prompt is not None and len(prompt) > PROMPT_OPTION_MAX:
            await self.refuse(interaction, prompt_too_long(PROMPT_OPTION_MAX, len(prompt)))
            return
        if not (prompt and prompt.strip()) and lyrics_file is None:
            try:
                modal = SongModal(options)
            except InvalidInput as exc:
                await self.refuse(interaction, exc.user_message)
                return
            await interaction.response.send_modal(modal)
            return
        responder = self.responder(interaction, options)
        try:
            if lyrics_file is not None:
                await responder.defer_if_urgent()
                try:
                    lyrics = await read_lyrics_file(
                        self.services.session, lyrics_file.url, lyrics_file.filename, lyrics_file.size
                    )
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
        """Check, admit, defer, submit; a refusal at a step answers the member (ephemerally) and ends the request."""
        await responder.defer_if_urgent()
        try:
            checked = await self._checked(interaction, options)
        except InvalidInput as exc:
            await responder.refuse(exc.user_message)
            return
        place = self.services.jobs.place(interaction.user.id)
        try:
            try:
                job_id = await self._admit(interaction, checked, place)
            except PolicyRefusal as refusal:
                await responder.refuse(refusal_text(refusal))
                return
            if await self._defer_or_refund(job_id, responder):
                self._submit(interaction, checked, job_id)
        finally:
            place.release()

    async def _checked(self, interaction: discord.Interaction, options: SongOptions) -> _Checked:
        """The request with the server's defaults and rules applied, and where it can be posted. Raises
        InvalidInput."""
        if interaction.guild_id is None:
            raise InvalidInput(NOT_IN_DMS)
        guild_settings = await self.services.store.get_guild_settings(interaction.guild_id)
        request, want_format, private = resolve(options, guild_settings, self.services.settings.fun_music_model)
        # from here on the cleaned text (no control or zero-width characters): titles, file names, the job row
        options = replace(options, prompt=request.prompt, lyrics=request.lyrics)
        if not private and not can_post_later(interaction):
            raise InvalidInput(CANNOT_POST_HERE)
        return _Checked(interaction.guild_id, options, request, want_format, private, guild_settings)

    async def _admit(self, interaction: discord.Interaction, checked: _Checked, place: Place) -> int:
        """The policy's verdict: the new job's id, its quota reserved and ``place`` claimed. Raises PolicyRefusal."""
        user = interaction.user
        ctx = RequestContext(
            guild_id=checked.guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=user.id,
            role_ids=member_role_ids(user),
            is_manager=is_manager(interaction),
            estimated_seconds=self.services.settings.estimated_song_seconds,
        )
        options = checked.options
        admission = await self.services.policy.admit(
            ctx,
            prompt=options.prompt,
            lyrics=options.lyrics,
            options={**options.to_json(), "want_format": checked.want_format, "title": title_for(options)},
            place=place,
            interaction_token=interaction.token,  # a restart edits this message in place while it lives
        )
        return admission.job_id

    async def _defer_or_refund(self, job_id: int, responder: Responder) -> bool:
        """Show "thinking…"; if Discord refuses, the job fails before it starts and its quota is given back."""
        try:
            await responder.defer()
        except discord.HTTPException as exc:
            log.warning("job %s: could not defer (%s); refunding", job_id, exc)
            await self.services.policy.refund(job_id)
            await self.services.store.transition(job_id, JobStatus.FAILED, error_code="defer")
            return False
        return True

    def _submit(self, interaction: discord.Interaction, checked: _Checked, job_id: int) -> None:
        """Hand the admitted job to the job manager, with the observer that shows it on Discord."""
        user, guild_id, request, want_format = interaction.user, checked.guild_id, checked.request, checked.want_format
        title, max_bytes = title_for(checked.options), interaction.filesize_limit
        song_ctx = SongContext(
            job_id=job_id,
            user_id=user.id,
            user_name=user.display_name,
            channel_id=interaction.channel_id or 0,
            guild_id=guild_id,
            request=request,
            want_format=want_format,
            private=checked.private,
            title=title,
            max_bytes=max_bytes,
        )
        spec = JobSpec(
            job_id=job_id,
            guild_id=guild_id,
            user_id=user.id,
            request=request,
            want_format=want_format,
            max_bytes=max_bytes,
            tags=Tags(title=title, artist="songbot (Fun-Music)", lyrics=""),
            guild_limit=checked.guild_settings.max_concurrent,
        )
        self.services.jobs.submit(spec, DiscordJobObserver(interaction, song_ctx))
        log.info("job %s accepted for user %s in guild %s", job_id, user.id, guild_id)

    async def refuse(self, interaction: discord.Interaction, text: str) -> None:
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
            await self.refuse(interaction, FORM_OUTDATED)
            return
        prompt = values.get(PROMPT_INPUT, "").strip() or None
        lyrics = values.get(LYRICS_INPUT, "").strip() or None
        if not prompt and not lyrics:
            await self.refuse(interaction, FORM_EMPTY)
            return
        await self.start_song(interaction, replace(options, prompt=prompt, lyrics=lyrics))

    # --- buttons (checked in _JobButton.interaction_check first) -------------------------------------------------
    async def cancel_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None:
        if job.status.terminal:
            await self.refuse(interaction, ended_text(job))
            return
        if not self.services.jobs.cancel(job.id, interaction.user.id):
            now = await self.services.store.get_job(job.id)  # it may have ended since the check
            await self.refuse(interaction, ended_text(now) if now and now.status.terminal else CANCEL_TOO_LATE)
            return
        await interaction.response.defer()

    async def regenerate_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None:
        if not (job.prompt or job.lyrics):
            await self.refuse(interaction, REGENERATE_DELETED)
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
