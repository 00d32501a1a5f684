"""How a job shows itself on Discord: throttled progress edits, the result message, and the delivery ladder.

Ladder: edit the original response → (token expired / 401 50027 / unknown webhook / any other refusal or a network
failure) post in the channel with the bot's token, mentioning the requester → (no permission there, a network
failure, or a private song) DM the requester → the download link alone, a small text message, on the first of those
places that takes it → log it. Every route catches whatever Discord or the network can throw (``ROUTE_ERRORS``) and
moves on to the next. Every attempt builds fresh ``discord.File`` objects: discord.py closes them after each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import discord

from cogs._limits import EMBED_TITLE, FIELD_VALUE, fit_embed, fit_lines
from cogs._words import (
    NO_PINGS,
    UPLOADING,
    cancelled_line,
    clip,
    download_in_title,
    download_link,
    failed_line,
    format_duration,
    generating_line,
    link_text,
    mention_only,
    more_lyrics,
    preparing_line,
    queued_line,
    relative,
    requested_by,
)
from cogs.song._views import CancelButton, RegenerateButton
from services.audio import slugify
from services.errors import SongbotError
from services.funmusic.request import GenerationRequest, Progress
from services.jobs import Delivery, DeliveryFailed, DeliveryRoute, PreparedSong
from services.store import JobStatus

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.5
MAX_PROGRESS_INTERVAL_S = 30.0
LYRICS_IN_EMBED = 3000
TOKEN_MARGIN_S = 30.0
#: What a network can throw at a request besides Discord's own answers: a server disconnect, a connection reset,
#: any other socket error, a timeout. discord.py lets these through (it retries only BSD/Windows resets itself).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
#: Everything one delivery route can fail with; the ladder moves on to the next route on any of them.
ROUTE_ERRORS: tuple[type[BaseException], ...] = (discord.HTTPException, *NETWORK_ERRORS)


@dataclass(frozen=True)
class SongContext:
    """Who asked for what, where: everything the delivery needs besides the finished song."""

    job_id: int
    user_id: int
    user_name: str
    channel_id: int
    guild_id: int | None
    request: GenerationRequest
    want_format: str
    private: bool
    title: str
    max_bytes: int


def token_usable(interaction: discord.Interaction) -> bool:
    remaining = (interaction.expires_at - discord.utils.utcnow()).total_seconds()
    return remaining > TOKEN_MARGIN_S


def _is_expired_token(exc: discord.HTTPException) -> bool:
    return exc.code in (50027, 10015) or exc.status == 401 or isinstance(exc, discord.NotFound)


class ProgressEditor:
    """Edits the deferred message with the latest progress, at most once every ``interval`` seconds.

    The service reports as often as it likes; this keeps only the newest text and flushes it on a timer, so
    Discord's per-route limits on ``@original`` edits are never hit. A 429 doubles the interval.
    """

    def __init__(self, interaction: discord.Interaction, interval: float = PROGRESS_INTERVAL_S) -> None:
        self._interaction = interaction
        self._interval = interval
        self._pending: tuple[str, discord.ui.View | None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def show(self, text: str, view: discord.ui.View | None) -> None:
        if self._stopped:
            return
        self._pending = (text, view)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -self._interval
        while not self._stopped:
            await self._wake.wait()
            delay = last + self._interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is None or self._stopped:
                continue
            if not token_usable(self._interaction):
                self._stopped = True
                return
            last = loop.time()
            await self._edit(*pending)

    async def _edit(self, text: str, view: discord.ui.View | None) -> None:
        try:
            await self._interaction.edit_original_response(
                content=text, view=view, embed=None, attachments=[], allowed_mentions=NO_PINGS
            )
        except discord.HTTPException as exc:
            if exc.status == 429:
                self._interval = min(self._interval * 2, MAX_PROGRESS_INTERVAL_S)
                log.info("progress edits rate limited; now every %.1f s", self._interval)
            elif _is_expired_token(exc):
                self._stopped = True
            else:
                log.warning("progress edit failed: %s", exc)
        except NETWORK_ERRORS as exc:
            log.warning("progress edit failed on the network: %s: %s", type(exc).__name__, exc)

    async def stop(self) -> None:
        """Stop editing; waits for an edit in flight so it cannot land after the final message."""
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


class SongMessage:
    """The parts of the result message, read once; files are rebuilt fresh for every attempt."""

    def __init__(self, ctx: SongContext, song: PreparedSong, audio: bytes | None, wave: bytes | None) -> None:
        self.ctx = ctx
        self.song = song
        self.audio = audio
        self.wave = wave

    @classmethod
    async def load(cls, ctx: SongContext, song: PreparedSong) -> SongMessage:
        audio = await _read(song.audio.path) if song.audio else None
        wave = await _read(song.waveform) if song.waveform else None
        return cls(ctx, song, audio, wave)

    async def reload_audio(self) -> None:
        self.audio = await _read(self.song.audio.path) if self.song.audio else None

    @property
    def audio_name(self) -> str:
        fmt = self.song.audio.format if self.song.audio else self.ctx.want_format
        return f"{slugify(self.ctx.title)}.{fmt}"

    def _extras(self) -> list[tuple[str, bytes]]:
        """The lyrics file and the waveform picture, each only if it fits the per-attachment limit."""
        extras: list[tuple[str, bytes]] = []
        lyrics = self.song.result.lyrics
        if lyrics:
            extras.append(("lyrics.txt", lyrics.encode("utf-8")))
        if self.wave is not None:
            extras.append(("waveform.png", self.wave))
        return [(name, data) for name, data in extras if len(data) <= self.ctx.max_bytes]

    def files(self) -> list[discord.File]:
        files: list[discord.File] = []
        if self.audio is not None:
            files.append(discord.File(io.BytesIO(self.audio), filename=self.audio_name))
        files.extend(discord.File(io.BytesIO(data), filename=name) for name, data in self._extras())
        return files

    def embed(self) -> discord.Embed:
        result, ctx, audio = self.song.result, self.ctx, self.song.audio
        embed = discord.Embed(title=clip(f"🎵 {ctx.title}", EMBED_TITLE), colour=discord.Colour.blurple())
        lyrics = discord.utils.escape_markdown(result.lyrics.strip())
        if lyrics:
            # escaped first (that can double it), then cut at whole lines; the full text is in lyrics.txt
            embed.description = fit_lines(
                lyrics.split("\n"),
                LYRICS_IN_EMBED,
                more=more_lyrics,
            )
        elif ctx.request.is_instrumental:
            embed.description = "*Instrumental — no lyrics.*"
        voice = "Instrumental" if ctx.request.is_instrumental else ctx.request.gender.capitalize()
        embed.add_field(name="Voice", value=voice)
        embed.add_field(name="Duration", value=format_duration(result.duration_s))
        embed.add_field(name="Format", value=self._format_text())
        if audio is None and result.url:
            expiry = f" (link expires {relative(result.url_expires_at)})" if result.url_expires_at else ""
            value = download_link(result.url, expiry)
            if len(value) > FIELD_VALUE:  # a long signed url: the title carries the link instead
                embed.url = result.url
                value = download_in_title(expiry)
            embed.add_field(name="Download", value=value, inline=False)
        embed.add_field(name="Request id", value=f"`{result.request_id or 'n/a'}`", inline=False)
        if any(name == "waveform.png" for name, _ in self._extras()):
            embed.set_image(url="attachment://waveform.png")
        embed.set_footer(text=requested_by(ctx.user_name, ctx.job_id))
        return fit_embed(embed)

    def _format_text(self) -> str:
        audio = self.song.audio
        if audio is None:
            return f"{self.song.result.format.upper()} (link)"
        text = audio.format.upper()
        if audio.bitrate_kbps:
            text += f" · {audio.bitrate_kbps} kbps"
        if audio.format != self.ctx.want_format:
            text += f" (a {self.ctx.want_format.upper()} would not fit the upload limit)"
        return text


class DiscordJobObserver:
    """The cog's side of one job: shows its progress and delivers it (see the module docstring)."""

    def __init__(self, interaction: discord.Interaction, ctx: SongContext) -> None:
        self.interaction = interaction
        self.ctx = ctx
        self.editor = ProgressEditor(interaction)
        self._client = interaction.client

    # --- progress ------------------------------------------------------------------------------------------------
    def _cancel_view(self) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(CancelButton(self.ctx.job_id))
        return view

    def _result_view(self) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(RegenerateButton(self.ctx.job_id))
        return view

    async def queued(self, position: int) -> None:
        self.editor.show(queued_line(position), self._cancel_view())

    async def stage(self, stage: JobStatus, progress: Progress | None) -> None:
        if stage == JobStatus.GENERATING:
            received = None if progress is None or progress.bytes_received == 0 else progress.seconds_received
            text = generating_line(received, progress.attempt if progress is not None else 1)
            self.editor.show(text, self._cancel_view())
        elif stage == JobStatus.PROCESSING:
            self.editor.show(preparing_line(self.ctx.want_format), None)
        elif stage == JobStatus.DELIVERING:
            self.editor.show(UPLOADING, None)

    # --- outcomes ------------------------------------------------------------------------------------------------
    async def deliver(self, song: PreparedSong) -> Delivery:
        await self.editor.stop()
        message = await SongMessage.load(self.ctx, song)
        if token_usable(self.interaction):
            delivered = await self._to_original(message)
            if delivered is not None:
                return delivered
        return await self._fallback(message)

    async def _to_original(self, message: SongMessage) -> Delivery | None:
        """Edit the deferred message into the result. None sends the song down the ladder (channel, DM): a song
        that was made is never lost to one refused edit."""
        while True:
            try:
                sent = await self.interaction.edit_original_response(
                    content=None,
                    embed=message.embed(),
                    attachments=message.files(),
                    view=self._result_view(),
                    allowed_mentions=NO_PINGS,
                )
                return Delivery(
                    sent.channel.id if sent.channel else self.ctx.channel_id, sent.id, DeliveryRoute.ORIGINAL
                )
            except discord.HTTPException as exc:
                if (exc.status == 413 or exc.code == 40005) and await self._shrink(message):
                    continue
                if _is_expired_token(exc):
                    log.info("job %s: interaction token expired; posting in the channel", self.ctx.job_id)
                else:
                    log.warning(
                        "job %s: could not edit in the result (%s); posting in the channel", self.ctx.job_id, exc
                    )
                return None
            except NETWORK_ERRORS as exc:
                log.warning(
                    "job %s: could not edit in the result (network: %s: %s); posting in the channel",
                    self.ctx.job_id,
                    type(exc).__name__,
                    exc,
                )
                return None

    async def _shrink(self, message: SongMessage) -> bool:
        """Discord refused the size: fit the audio again under a smaller limit (down to the link), then drop the
        picture. False when nothing is left to make smaller; each call shrinks something, so retries end."""
        current = message.song.audio.size if message.song.audio else 0
        if current == 0:
            if message.wave is None:
                return False
            message.wave = None  # the audio is already a link; drop the picture too
            return True
        log.info("job %s: upload of %d bytes refused (413); fitting smaller", self.ctx.job_id, current)
        await message.song.refit(int(current * 0.7))
        await message.reload_audio()
        return True

    async def _fallback(self, message: SongMessage) -> Delivery:
        text = f"<@{self.ctx.user_id}> your song is ready."
        for target in self._own_routes():
            try:
                messageable = await self._messageable(target)
                while True:
                    try:
                        sent = await messageable.send(
                            text,
                            embed=message.embed(),
                            files=message.files(),
                            view=self._result_view(),
                            allowed_mentions=mention_only(self.ctx.user_id),
                        )
                        return Delivery(sent.channel.id, sent.id, target)
                    except discord.HTTPException as exc:
                        if (exc.status == 413 or exc.code == 40005) and await self._shrink(message):
                            continue
                        raise
            except ROUTE_ERRORS as exc:
                log.warning("job %s: could not deliver by %s: %s: %s", self.ctx.job_id, target, type(exc).__name__, exc)
        link = await self._link(message)
        if link is not None:
            return link
        raise DeliveryFailed(f"job {self.ctx.job_id}: every delivery route failed")

    async def _link(self, message: SongMessage) -> Delivery | None:
        """The last route: the download link alone, as a small text message, on the first place that takes it:
        the original response, an (ephemeral, for a private song) follow-up, the channel, a DM. None without a
        url, or when no place took it."""
        result = message.song.result
        if not result.url:
            return None
        text = link_text(result.url, result.url_expires_at)
        if token_usable(self.interaction):
            try:
                sent = await self.interaction.edit_original_response(
                    content=text, embed=None, attachments=[], view=None, allowed_mentions=NO_PINGS
                )
                return Delivery(sent.channel.id if sent.channel else self.ctx.channel_id, sent.id, DeliveryRoute.LINK)
            except ROUTE_ERRORS as exc:
                log.warning("job %s: could not edit in the link: %s: %s", self.ctx.job_id, type(exc).__name__, exc)
            try:
                followup = await self.interaction.followup.send(
                    text, ephemeral=self.ctx.private, allowed_mentions=NO_PINGS, wait=True
                )
                return Delivery(
                    followup.channel.id if followup.channel else self.ctx.channel_id, followup.id, DeliveryRoute.LINK
                )
            except ROUTE_ERRORS as exc:
                log.warning(
                    "job %s: could not follow up with the link: %s: %s", self.ctx.job_id, type(exc).__name__, exc
                )
        for target in self._own_routes():
            try:
                messageable = await self._messageable(target)
                posted = await messageable.send(
                    f"<@{self.ctx.user_id}> {text}", allowed_mentions=mention_only(self.ctx.user_id)
                )
                return Delivery(posted.channel.id, posted.id, DeliveryRoute.LINK)
            except ROUTE_ERRORS as exc:
                log.warning(
                    "job %s: could not post the link by %s: %s: %s", self.ctx.job_id, target, type(exc).__name__, exc
                )
        return None

    def _own_routes(self) -> list[DeliveryRoute]:
        """The routes that use the bot's own token, in order: the channel (never for a private song), then DMs."""
        return [DeliveryRoute.DM] if self.ctx.private else [DeliveryRoute.CHANNEL, DeliveryRoute.DM]

    async def _messageable(self, target: DeliveryRoute) -> discord.abc.Messageable:
        if target == DeliveryRoute.CHANNEL:
            return self._client.get_partial_messageable(self.ctx.channel_id, guild_id=self.ctx.guild_id)
        # the DM channel from the member's id alone: no user lookup (the bot has no members intent or cache)
        return await self._client.create_dm(discord.Object(self.ctx.user_id))

    async def failed(self, error: SongbotError) -> None:
        await self.editor.stop()
        await self._tell(failed_line(error))

    async def cancelled(self, by_user_id: int | None) -> None:
        await self.editor.stop()
        await self._tell(cancelled_line(by_user_id, self.ctx.user_id))

    async def _tell(self, text: str) -> None:
        """A final word: on the original message while the token lives, else in the channel (or a DM)."""
        if token_usable(self.interaction):
            try:
                await self.interaction.edit_original_response(
                    content=text, embed=None, attachments=[], view=None, allowed_mentions=NO_PINGS
                )
                return
            except discord.HTTPException as exc:
                if not _is_expired_token(exc):
                    log.warning("job %s: could not edit the original response: %s", self.ctx.job_id, exc)
            except NETWORK_ERRORS as exc:
                log.warning(
                    "job %s: could not edit the original response: %s: %s", self.ctx.job_id, type(exc).__name__, exc
                )
        mention = f"<@{self.ctx.user_id}> "
        for target in self._own_routes():
            try:
                messageable = await self._messageable(target)
                await messageable.send(mention + text, allowed_mentions=mention_only(self.ctx.user_id))
                return
            except ROUTE_ERRORS as exc:
                log.warning("job %s: could not tell the member by %s: %s", self.ctx.job_id, target, exc)
        log.error("job %s: member %s could not be told: %s", self.ctx.job_id, self.ctx.user_id, text)
