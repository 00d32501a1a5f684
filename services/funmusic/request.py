"""What a Fun-Music request is, what comes back, and the documented input limits.

Limits follow ``docs/dashscope.md`` section 1. Text that contains CJK characters is counted
in Chinese characters; otherwise prompts and streaming lyrics are counted in English words and non-streaming lyrics
in characters. A request that fits the streaming limits is streamed; one that only fits the non-streaming limits
is not; one that fits neither is refused with one sentence, before any network call.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from services.errors import InvalidInput

MODEL_V1 = "fun-music-v1"
MODEL_PREVIEW = "fun-music-preview"
MODELS = (MODEL_V1, MODEL_PREVIEW)
GENDERS = ("female", "male")
FORMATS = ("mp3", "wav")


class Mode(StrEnum):
    STREAMING = "streaming"
    NON_STREAMING = "non-streaming"


_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
_SECTION_TAG_RE = re.compile(r"\[(?:intro|verse|pre-chorus|chorus|bridge|outro|hook|inst)[^\]]*\]", re.IGNORECASE)


def contains_cjk(text: str) -> bool:
    return _CJK_RE.search(text) is not None


def count_cjk(text: str) -> int:
    return len(_CJK_RE.findall(text))


def count_words(text: str) -> int:
    """English words; section tags such as ``[verse]`` are structure, not words."""
    return len(_WORD_RE.findall(_SECTION_TAG_RE.sub(" ", text)))


def clean_text(text: str) -> str:
    """Drop control and zero-width characters (keeping newlines and tabs) and trim; normalise line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = [ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")]
    return "".join(kept).strip()


@dataclass(frozen=True)
class Measure:
    """A length in the unit the limits use for this text."""

    value: int
    unit: str  # "Chinese characters", "characters", "words"


@dataclass(frozen=True)
class Limit:
    low: int
    high: int

    def holds(self, value: int) -> bool:
        return self.low <= value <= self.high


def _fmt(n: int) -> str:
    return f"{n:,}"


def measure_prompt(prompt: str, mode: Mode) -> Measure:
    if contains_cjk(prompt):
        if mode is Mode.STREAMING:
            return Measure(count_cjk(prompt) + count_words(_CJK_RE.sub(" ", prompt)), "Chinese characters")
        return Measure(len(prompt), "characters")
    if mode is Mode.STREAMING:
        return Measure(count_words(prompt), "words")
    return Measure(len(prompt), "characters")


def measure_lyrics(lyrics: str, mode: Mode) -> Measure:
    if contains_cjk(lyrics):
        return Measure(count_cjk(lyrics), "Chinese characters")
    if mode is Mode.STREAMING:
        return Measure(count_words(lyrics), "words")
    return Measure(len(lyrics), "characters")


PROMPT_LIMITS: dict[tuple[Mode, str], Limit] = {
    (Mode.NON_STREAMING, "characters"): Limit(1, 2000),
    (Mode.STREAMING, "Chinese characters"): Limit(5, 1000),
    (Mode.STREAMING, "words"): Limit(5, 1000),
}
LYRICS_LIMITS: dict[tuple[Mode, str], Limit] = {
    (Mode.NON_STREAMING, "Chinese characters"): Limit(5, 350),
    (Mode.NON_STREAMING, "characters"): Limit(5, 2000),
    (Mode.STREAMING, "Chinese characters"): Limit(300, 350),
    (Mode.STREAMING, "words"): Limit(200, 250),
}


@dataclass(frozen=True)
class GenerationRequest:
    """One song to make. Build it, then call :meth:`validated` to get the cleaned request and its mode."""

    prompt: str | None = None
    lyrics: str | None = None
    is_instrumental: bool = False
    gender: str = "female"
    format: str = "mp3"
    watermark: bool = False
    model: str = MODEL_V1

    def _check_choices(self) -> None:
        if self.model not in MODELS:
            raise InvalidInput(f"Model must be one of {', '.join(MODELS)}; got {self.model!r}.")
        if self.gender not in GENDERS:
            raise InvalidInput("Voice must be female or male.")
        if self.format not in FORMATS:
            raise InvalidInput("Format must be mp3 or wav.")

    def cleaned(self) -> GenerationRequest:
        prompt = clean_text(self.prompt) if self.prompt else ""
        lyrics = clean_text(self.lyrics) if self.lyrics else ""
        return GenerationRequest(
            prompt=prompt or None,
            lyrics=lyrics or None,
            is_instrumental=self.is_instrumental,
            gender=self.gender,
            format=self.format,
            watermark=self.watermark,
            model=self.model,
        )

    @property
    def effective_lyrics(self) -> str | None:
        """Lyrics are ignored by the service for instrumentals; we do not send them."""
        return None if self.is_instrumental else self.lyrics

    def validated(self) -> tuple[GenerationRequest, Mode]:
        """Clean the text, check every rule, and choose the mode. Raises :class:`InvalidInput`."""
        self._check_choices()
        req = self.cleaned()
        if req.model == MODEL_PREVIEW and not req.prompt:
            raise InvalidInput("The fun-music-preview model needs a style prompt; add one.")
        lyrics = req.effective_lyrics
        if not req.prompt and not lyrics:
            if req.is_instrumental and req.lyrics:
                raise InvalidInput("Instrumental songs have no lyrics; give a style prompt instead.")
            raise InvalidInput("Give a style prompt or lyrics (or both).")
        if lyrics:
            return req, _choose_mode(lyrics, measure_lyrics, LYRICS_LIMITS, "Lyrics")
        assert req.prompt is not None
        return req, _choose_mode(req.prompt, measure_prompt, PROMPT_LIMITS, "The prompt")

    def body(self) -> dict[str, object]:
        """The JSON body DashScope expects, the same for both modes (the header differs); every option is inside
        ``input``."""
        inp: dict[str, object] = {"format": self.format}
        lyrics = self.effective_lyrics
        if lyrics:
            inp["lyrics"] = lyrics
        if self.prompt:
            inp["prompt"] = self.prompt
        if self.is_instrumental:
            inp["is_instrumental"] = True
        if self.model == MODEL_V1 and not self.is_instrumental:
            inp["gender"] = self.gender
        if self.watermark:
            inp["enable_aigc_watermark"] = True
        return {"model": self.model, "input": inp}


def _choose_mode(
    text: str,
    measure: Callable[[str, Mode], Measure],
    limits: dict[tuple[Mode, str], Limit],
    what: str,
) -> Mode:
    streaming = measure(text, Mode.STREAMING)
    if limits[(Mode.STREAMING, streaming.unit)].holds(streaming.value):
        return Mode.STREAMING
    whole = measure(text, Mode.NON_STREAMING)
    limit = limits[(Mode.NON_STREAMING, whole.unit)]
    if limit.holds(whole.value):
        return Mode.NON_STREAMING
    raise InvalidInput(
        f"{what} must be {_fmt(limit.low)}–{_fmt(limit.high)} {whole.unit}; yours has {_fmt(whole.value)}."
    )


@dataclass
class GenerationResult:
    """A finished song. ``audio_path`` is a file the caller owns (delete it when done)."""

    audio_path: Path
    format: str
    lyrics: str
    duration_s: float
    sample_rate: int
    channels: int
    request_id: str | None
    url: str | None
    url_expires_at: int | None
    billed_seconds: int | None = None
    audio_bytes: int = 0
    mode: Mode = Mode.STREAMING
    extra: dict[str, object] = field(default_factory=dict)


class ProgressStage(StrEnum):
    """Where one generation is: connecting, streaming audio, downloading it from a url, or waiting to retry."""

    CONNECTING = "connecting"
    GENERATING = "generating"
    DOWNLOADING = "downloading"
    RETRYING = "retrying"


@dataclass(frozen=True)
class Progress:
    """How far a generation has come: bytes of audio and seconds of audio received so far."""

    stage: ProgressStage
    bytes_received: int = 0
    seconds_received: float = 0.0
    attempt: int = 1


ProgressCallback = Callable[[Progress], Awaitable[None]]
