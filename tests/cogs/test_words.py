"""Every message builder fits Discord's limits by construction, and counts read right: the fit toolkit, the
plural helper, and each builder fed its worst case, checked by the offline Discord's own validation (the rules
that answer 400/50035)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import discord
import pytest

from cogs._limits import (
    BUTTON_LABEL,
    CONTENT,
    EMBED_DESCRIPTION,
    EMBED_FIELDS,
    EMBED_TOTAL,
    FIELD_VALUE,
    PREFIX_ROOM,
    escaped,
    fit_embed,
    fit_lines,
    fit_text,
)
from cogs._text import clip, listing, plural
from cogs._words import (
    FAILURES,
    SETTING_DESCRIPTIONS,
    failure_text,
    refusal_text,
    setting_allowed,
    setting_error_text,
    setting_value,
)
from cogs.config import describe_change, history_embed, settings_embed, usage_embed
from cogs.song import CancelButton, RegenerateButton
from cogs.song._delivery import LYRICS_IN_EMBED, SongContext, SongMessage
from services.audio import FitResult, Tags
from services.errors import InvalidInput, PolicyRefusal, SongbotError, SongTooLong, ThrottledError
from services.funmusic.request import GenerationRequest, GenerationResult
from services.guild_settings import DEFAULTS, MAX_IDS, SPECS, GuildSettings, InvalidSetting, validate_setting
from services.jobs import PreparedSong
from services.offline.discord_rest import DiscordError, Rules, check_components, check_embeds
from services.policy import MemberUsage, RefusalReason, ServerUsage
from services.store import JobRecord, JobStatus, MemberTotals

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
#: What a member could put in a prompt to make escaping double it.
MARKDOWN = "*_~`|>\\" * 40
#: A real-looking signed OSS download url: hundreds of characters.
SIGNED_URL = "https://dashscope-result.oss-cn-beijing.aliyuncs.com/1d/ab/song.mp3?" + "&".join(
    f"x-oss-{name}={'A1b2C3d4' * 12}" for name in ("credential", "signature", "security-token", "date", "expires")
)
CHANNELS = tuple(range(10**17, 10**17 + MAX_IDS))
ROLES = tuple(range(2 * 10**17, 2 * 10**17 + MAX_IDS))


def assert_fits(content: str | None = None, embeds: list[discord.Embed] | None = None) -> None:
    """Discord would accept this message: the offline Discord's own checks (400/50035 otherwise)."""
    if content is not None:
        assert len(content) <= CONTENT, len(content)
    try:
        check_embeds([embed.to_dict() for embed in embeds or []], Rules(), "data.")  # type: ignore[misc]
    except DiscordError as exc:
        raise AssertionError(f"Discord would refuse it: {exc} {exc.errors}") from None


# --- the helpers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "noun", "text"),
    [
        (0, "song", "0 songs"),
        (1, "song", "1 song"),
        (2, "song", "2 songs"),
        (1, "minute", "1 minute"),
        (1.0, "minute", "1 minute"),
        (2.5, "minute", "2.5 minutes"),
        (0.25, "minute", "0.2 minutes"),
        (1, "entry", "1 entry"),
        (3, "entry", "3 entries"),
        (60, "channel", "60 channels"),
    ],
)
def test_plural(count: float, noun: str, text: str) -> None:
    assert plural(count, noun) == text


def test_counts_read_right_in_settings_and_refusals() -> None:
    assert setting_value(SPECS["cooldown"], 1) == "1 second"
    assert setting_value(SPECS["cooldown"], 60) == "60 seconds"
    assert setting_value(SPECS["member_daily_songs"], 1) == "1 song"
    assert setting_allowed(SPECS["max_concurrent"]) == "1–20 songs"
    assert setting_allowed(SPECS["channels"]) == "up to 100 channels; empty means all"
    assert listing(["a", "b", "c"], 2, "role") == "a, b and 1 more role"
    assert listing(["a", "b", "c", "d"], 2, "role") == "a, b and 2 more roles"
    with pytest.raises(InvalidSetting) as refused:
        validate_setting("max_concurrent", 21)
    assert "between 1 and 20 songs" in setting_error_text(refused.value)


def test_every_setting_is_described_here() -> None:
    assert set(SETTING_DESCRIPTIONS) == set(SPECS)


def test_clip_never_leaves_half_an_escape() -> None:
    for limit in range(2, 40):
        cut = escaped(MARKDOWN, limit)
        assert len(cut) <= limit
        body = cut.removesuffix("…")
        assert (len(body) - len(body.rstrip("\\"))) % 2 == 0, cut
    assert clip("abc", 3) == "abc" and clip("abcd", 3) == "ab…"


def test_fit_lines_keeps_whole_lines_prefers_full_ones_and_counts_the_rest() -> None:
    full = [f"line {i} " + "x" * 90 for i in range(10)]
    short = [f"line {i}" for i in range(10)]
    text = fit_lines(full, 400, short=short, more=lambda n: f"and {n} more")
    assert len(text) <= 400
    assert text.split("\n")[0] == full[0]  # the newest keeps its full form while the rest still fit short
    assert all(line in full or line in short for line in text.split("\n"))
    assert text.split("\n")[-1] == short[-1]  # nothing was dropped: every line is there, some short
    crowded = fit_lines(full, 150, short=[s + "y" * 20 for s in short], more=lambda n: f"and {n} more")
    assert len(crowded) <= 150 and crowded.endswith("more")
    shown_lines = crowded.split("\n")[:-1]
    assert crowded.split("\n")[-1] == f"and {10 - len(shown_lines)} more"
    assert len(fit_lines(["z" * 5000], 100, more=lambda n: "…")) <= 100
    assert fit_text("a\n" * 3000, 2000).count("\n") < 1000


def test_fit_embed_repairs_anything() -> None:
    embed = discord.Embed(title="t" * 1000, description="d\n" * 5000)
    embed.set_footer(text="f" * 5000)
    embed.set_author(name="a" * 1000)
    for i in range(40):
        embed.add_field(name="n" * 1000, value=f"{i}\n" * 2000)
    fit_embed(embed)
    assert len(embed.fields) <= EMBED_FIELDS
    assert_fits(embeds=[embed])


# --- the builders, worst case -----------------------------------------------------------------------------------


def _job(number: int, *, title: str, url: str | None) -> JobRecord:
    return JobRecord(
        id=number,
        guild_id=10**18,
        channel_id=10**18 + 1,
        user_id=10**18 + 2,
        prompt=title,
        lyrics=None,
        options={"title": title},
        status=JobStatus.DELIVERED,
        request_id="req",
        duration_s=30.0,
        url=url,
        url_expires_at=NOW + timedelta(hours=20) if url else None,
        message_id=10**18 + 3 + number,
        error_code=None,
        error_id=None,
        created_at=NOW - timedelta(minutes=number),
        updated_at=NOW,
        finished_at=NOW,
    )


def test_history_with_markdown_titles_and_signed_urls_fits() -> None:
    jobs = [_job(i, title=MARKDOWN, url=SIGNED_URL) for i in range(10)]
    embed = history_embed(jobs, NOW)
    assert_fits(embeds=[embed])
    assert embed.description is not None
    lines = embed.description.split("\n")
    assert SIGNED_URL in lines[0]  # the newest song keeps its download link
    assert len(lines) == 10 and all("[message](" in line for line in lines)  # every song is listed
    assert all(len(line.split("**")[1]) <= 80 for line in lines)  # titles cut after escaping

    crowded = history_embed([_job(i, title=MARKDOWN, url=SIGNED_URL * 4) for i in range(40)], NOW)
    assert_fits(embeds=[crowded])
    assert crowded.description is not None and "older songs not shown" in crowded.description


def test_config_replies_with_full_lists_fit() -> None:
    full = DEFAULTS.with_changes({"channels": CHANNELS, "roles": ROLES, "cooldown": 1, "member_daily_songs": 1})
    for before, after in [
        (DEFAULTS.with_changes({"channels": CHANNELS[:-1]}), DEFAULTS.with_changes({"channels": CHANNELS})),
        (full, DEFAULTS),
        (DEFAULTS, full),
        (full, full.with_changes({"channels": CHANNELS[1:]})),
    ]:
        text = describe_change(before, after)
        assert len(text) <= CONTENT, len(text)
        assert "→" in text
    added = describe_change(
        DEFAULTS.with_changes({"channels": CHANNELS[:-1]}), DEFAULTS.with_changes({"channels": CHANNELS})
    )
    assert added == f"**channels**: 99 channels → 100 channels (added <#{CHANNELS[-1]}>)"
    assert "1 second" in describe_change(DEFAULTS, full) and "1 song" in describe_change(DEFAULTS, full)

    embed = settings_embed(full, "*" * 100)
    assert_fits(embeds=[embed])
    channels = next(f for f in embed.fields if f.name == "channels")
    assert channels.value is not None and "100 channels" in channels.value and "and 95 more" in channels.value


def test_usage_fits_and_counts_read_right() -> None:
    mine = MemberUsage(NOW.date(), 1, 1, 0, 90, NOW)
    top = [MemberTotals(10**18 + i, 1, 60) for i in range(5)]
    server = ServerUsage(NOW.date(), 1, 1, 0, 60, 60, 0, NOW, top)
    embed = usage_embed(mine, server)
    assert_fits(embeds=[embed])
    text = "\n".join(f"{f.name}: {f.value}" for f in embed.fields)
    assert "1 of 1 song, 1:30 of music; 0 songs left today." in text
    assert "1 of 1 song, 1 minute of 1 minute of music." in text
    assert "(s)" not in text


def _song_message(tmp_path: Path, *, lyrics: str, url: str, audio: bool) -> SongMessage:
    request = GenerationRequest(prompt="p")
    ctx = SongContext(
        job_id=7,
        user_id=1,
        user_name="n" * 32,
        channel_id=2,
        guild_id=3,
        request=request,
        want_format="mp3",
        private=False,
        title="t" * 100,
        max_bytes=10 * 2**20,
    )
    result = GenerationResult(
        audio_path=tmp_path / "a.mp3",
        format="mp3",
        lyrics=lyrics,
        duration_s=180.0,
        sample_rate=48000,
        channels=2,
        request_id="r" * 36,
        url=url,
        url_expires_at=int(NOW.timestamp()) + 86400,
    )
    fitted = FitResult(tmp_path / "a.mp3", "mp3", 10, 128, True) if audio else None
    song = PreparedSong(7, result, fitted, None, Tags(title="t"), "mp3", tmp_path)
    return SongMessage(ctx, song, b"x" if audio else None, None)


def test_song_embed_with_markdown_lyrics_and_a_long_signed_url_fits(tmp_path: Path) -> None:
    lyrics = "\n".join(f"[verse] {MARKDOWN[:60]} {i}" for i in range(300))
    message = _song_message(tmp_path, lyrics=lyrics, url=SIGNED_URL * 3, audio=False)
    embed = message.embed()
    assert_fits(embeds=[embed])
    assert embed.description is not None and len(embed.description) <= LYRICS_IN_EMBED
    assert "more lines in lyrics.txt" in embed.description
    assert "\\*" in embed.description  # shown as typed, not as markdown
    assert embed.url == SIGNED_URL * 3  # too long for a field: the title links to the song
    short = _song_message(tmp_path, lyrics="la la", url=SIGNED_URL, audio=False).embed()
    assert_fits(embeds=[short])
    download = next(f for f in short.fields if f.name == "Download")
    assert download.value is not None and SIGNED_URL in download.value


@pytest.mark.parametrize("reason", list(RefusalReason))
def test_every_refusal_reason_has_its_sentence(reason: RefusalReason) -> None:
    """The policy hands over data only; each of its reasons has words here, with every placeholder filled."""
    refusal = PolicyRefusal(reason, retry_at=NOW.timestamp(), limit=3, left=30, needed=90, ids=(1, 2))
    text = refusal_text(refusal)
    assert text and "{" not in text and "}" not in text


def test_every_failure_has_its_sentence_with_its_data() -> None:
    """The errors carry data; the words (by class, nearest in the MRO) are filled from it here."""
    examples: list[SongbotError] = [cls("log text") for cls in FAILURES if cls not in (SongTooLong, ThrottledError)]
    examples += [SongTooLong("log", duration_s=421, limit_s=300), ThrottledError("log", retry_after=30)]
    for error in examples:
        text = failure_text(error)
        assert text.startswith(FAILURES[type(error)].split("{")[0]) and "{" not in text, text
    assert "is 7:01 long, over this bot's limit of 5:00" in failure_text(examples[-2])
    assert "busy right now; try again <t:" in failure_text(examples[-1])


def test_failure_and_refusal_texts_fit_with_their_prefix() -> None:
    long = InvalidInput("word " * 2000)
    text = failure_text(long)
    assert len(text) <= CONTENT - PREFIX_ROOM and text.endswith(f"(error id `{long.error_id}`)")
    refusal = PolicyRefusal("cooldown", "wait " * 1000, retry_at=NOW.timestamp())
    assert len(refusal_text(refusal)) <= CONTENT - PREFIX_ROOM


def test_the_offline_discord_refuses_what_discord_refuses() -> None:
    """So the end-to-end tests prove the fit: an over-limit part is a 400/50035, as on Discord."""
    too_many = {"fields": [{"name": "n", "value": "v"} for _ in range(26)]}
    for embed in (
        {"description": "d" * (EMBED_DESCRIPTION + 1)},
        {"fields": [{"name": "n" * 257, "value": "v"}]},
        {"fields": [{"name": "n", "value": "v" * (FIELD_VALUE + 1)}]},
        {"footer": {"text": "f" * 2049}},
        {"author": {"name": "a" * 257}},
        too_many,
        {"description": "d" * 4000, "fields": [{"name": "n", "value": "v" * 1000}] * 3},
    ):
        with pytest.raises(DiscordError) as caught:
            check_embeds([embed], Rules(), "data.")
        assert (caught.value.status, caught.value.code) == (400, 50035)
    assert EMBED_TOTAL == Rules().max_embed_total
    button = {"type": 1, "components": [{"type": 2, "style": 1, "label": "l" * 81, "custom_id": "x"}]}
    with pytest.raises(DiscordError):
        check_components([button], 0, Rules(), "data.")


def test_settings_default_fits_too() -> None:
    assert_fits(embeds=[settings_embed(GuildSettings(), "guild")])


async def test_button_labels_fit() -> None:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(2**63 - 1))
    view.add_item(RegenerateButton(2**63 - 1))
    components = view.to_components()
    check_components(components, 0, Rules(), "data.")
    labels = [button["label"] for row in components for button in row["components"]]
    assert labels and all(len(label) <= BUTTON_LABEL for label in labels)
