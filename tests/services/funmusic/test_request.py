"""Input validation and mode choice follow the Fun-Music reference's limits, before any network call."""

from __future__ import annotations

import pytest

from services.errors import InvalidInput
from services.funmusic.request import (
    MODEL_PREVIEW,
    GenerationRequest,
    Mode,
    clean_text,
    count_words,
)


def words(n: int) -> str:
    return " ".join(f"word{i % 7}" for i in range(n))


def hanzi(n: int) -> str:
    return "我们一起唱歌吧" * (n // 7) + "我" * (n % 7)


@pytest.mark.parametrize(
    ("request_", "mode"),
    [
        (GenerationRequest(prompt="upbeat summer folk with guitar"), Mode.STREAMING),
        (GenerationRequest(prompt="jazz"), Mode.NON_STREAMING),  # under 5 words streams nothing
        (GenerationRequest(prompt=words(1000)), Mode.STREAMING),  # 1000 words stream, though > 2000 characters
        (GenerationRequest(lyrics=words(200)), Mode.STREAMING),
        (GenerationRequest(lyrics=words(250)), Mode.STREAMING),
        (GenerationRequest(lyrics=words(251)), Mode.NON_STREAMING),
        (GenerationRequest(lyrics=words(20)), Mode.NON_STREAMING),
        (GenerationRequest(lyrics=hanzi(300)), Mode.STREAMING),
        (GenerationRequest(lyrics=hanzi(120)), Mode.NON_STREAMING),
        (GenerationRequest(prompt="一首关于夏天的民谣"), Mode.STREAMING),
    ],
)
def test_mode_follows_the_streaming_limits(request_: GenerationRequest, mode: Mode) -> None:
    assert request_.validated()[1] is mode


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerationRequest(lyrics="x" * 2341), "Lyrics must be 5–2,000 characters; yours has 2,341."),
        (GenerationRequest(lyrics="hey"), "Lyrics must be 5–2,000 characters; yours has 3."),
        (GenerationRequest(lyrics=hanzi(400)), "Lyrics must be 5–350 Chinese characters; yours has 400."),
        (GenerationRequest(prompt="p" * 2001), "The prompt must be 1–2,000 characters; yours has 2,001."),
        (GenerationRequest(prompt=words(1001)), "The prompt must be 1–2,000 characters; yours has 6,005."),
        (GenerationRequest(), "Give a style prompt or lyrics (or both)."),
        (GenerationRequest(prompt="\u200b\u200b  \x07"), "Give a style prompt or lyrics (or both)."),
        (GenerationRequest(lyrics="la la la la", is_instrumental=True), "Instrumental songs have no lyrics"),
        (GenerationRequest(lyrics="la la la la la", model=MODEL_PREVIEW), "needs a style prompt"),
        (GenerationRequest(prompt="a song", gender="robot"), "Voice must be female or male."),
        (GenerationRequest(prompt="a song", format="flac"), "Format must be mp3 or wav."),
    ],
)
def test_bad_input_says_what_to_change(request_: GenerationRequest, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        request_.validated()
    assert message in caught.value.user_message


def test_body_follows_the_reference() -> None:
    req, _ = GenerationRequest(prompt="folk song", lyrics="[verse]\nla la la la", watermark=True).validated()
    assert req.body() == {
        "model": "fun-music-v1",
        "input": {
            "format": "mp3",
            "lyrics": "[verse]\nla la la la",
            "prompt": "folk song",
            "gender": "female",
            "enable_aigc_watermark": True,
        },
    }
    instrumental, _ = GenerationRequest(prompt="folk song", lyrics="words", is_instrumental=True).validated()
    assert instrumental.body()["input"] == {
        "format": "mp3",
        "prompt": "folk song",
        "is_instrumental": True,
    }
    preview, _ = GenerationRequest(prompt="folk song", model=MODEL_PREVIEW, gender="male").validated()
    preview_input = preview.body()["input"]
    assert isinstance(preview_input, dict) and "gender" not in preview_input


def test_cleaning_drops_control_and_zero_width_characters() -> None:
    assert clean_text(" a\u200bb\x00c\r\nd\te\u202e ") == "abc\nd\te"
    assert count_words("[verse]\nDon't stop me-now [chorus] yeah") == 4
