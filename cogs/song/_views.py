"""What ``/song`` puts on Discord that outlives the process: the form (its custom id carries the options) and the
Cancel and Regenerate buttons (``DynamicItem``s whose custom ids carry the job). Their templates and the form's
custom id are a contract with messages already posted: they never change. Presses and submits are handed to the
``SongCog`` (found by name, typed by :class:`SongActions`), so this module imports nothing of the cog."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal, Protocol

import discord

from cogs._checks import is_manager
from cogs._words import (
    BAD_FORMAT,
    BAD_VOICE,
    CANCEL_LABEL,
    CANCEL_NOT_YOURS,
    FORM_LYRICS_HINT,
    FORM_LYRICS_LABEL,
    FORM_PROMPT_HINT,
    FORM_PROMPT_LABEL,
    FORM_TITLE,
    NO_PINGS,
    REGENERATE_LABEL,
    REGENERATE_PRIVATE,
    SONG_NOT_HERE,
    failure_text,
)
from services.errors import InvalidInput, SongbotError
from services.song_request import FORMAT_CHOICES, SongOptions
from services.store import JobRecord

if TYPE_CHECKING:
    from bot import Services

log = logging.getLogger("cogs.song")

PROMPT_OPTION_MAX = 1000

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


class SongActions(Protocol):
    """What a press needs of the cog: its services, an ephemeral refusal, and the two actions."""

    @property
    def services(self) -> Services: ...

    async def refuse(self, interaction: discord.Interaction, text: str) -> None: ...

    async def cancel_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None: ...

    async def regenerate_clicked(self, interaction: discord.Interaction, job: JobRecord) -> None: ...


def _song_cog(interaction: discord.Interaction) -> SongActions:
    cog: SongActions | None = interaction.client.get_cog("SongCog")  # type: ignore[attr-defined]
    assert cog is not None
    return cog


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
            await cog.refuse(interaction, refusal)
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
            discord.ui.Button(label=CANCEL_LABEL, style=discord.ButtonStyle.danger, custom_id=f"song:cancel:{job_id}")
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
                label=REGENERATE_LABEL,
                emoji="🔁",
                style=discord.ButtonStyle.secondary,
                custom_id=f"song:regen:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenerateButton:
        return cls(int(match["job"]))


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
        raise InvalidInput(BAD_VOICE)
    if options.format is not None and options.format not in FORMAT_CHOICES:
        raise InvalidInput(BAD_FORMAT)
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


class SongModal(discord.ui.Modal, title=FORM_TITLE):
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
            discord.ui.Label(text=FORM_PROMPT_LABEL, description=FORM_PROMPT_HINT, component=self.prompt_input)
        )
        self.add_item(
            discord.ui.Label(text=FORM_LYRICS_LABEL, description=FORM_LYRICS_HINT, component=self.lyrics_input)
        )
        self.stop()  # a finished modal is not stored by send_modal: the submit goes to the listener only


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
