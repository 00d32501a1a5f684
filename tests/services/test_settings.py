"""Settings are built once and validated; every problem is one sentence naming the variable; secrets stay hidden."""

from __future__ import annotations

import logging

import pytest

from services.errors import ConfigError
from services.logs import REDACTED, RedactingFilter
from services.settings import Secret, load_settings

BASE = {"DISCORD_TOKEN": "discord-token-value", "DASHSCOPE_API_KEY": "sk-secret-key-value"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DASHSCOPE_API_KEY": "k"}, "DISCORD_TOKEN is not set"),
        ({**BASE, "MAX_CONCURRENT_GENERATIONS": "lots"}, "MAX_CONCURRENT_GENERATIONS must be a whole number"),
        ({**BASE, "MAX_CONCURRENT_GENERATIONS": "0"}, "MAX_CONCURRENT_GENERATIONS must be between 1 and 64"),
        ({**BASE, "DASHSCOPE_BASE_URL": "dashscope.aliyuncs.com"}, "DASHSCOPE_BASE_URL must be a full"),
        ({**BASE, "FUN_MUSIC_MODEL": "fun-music-v2"}, "FUN_MUSIC_MODEL must be fun-music-v1 or fun-music-preview"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({**BASE, "SONGBOT_SIMULATE": "maybe"}, "SONGBOT_SIMULATE must be 1 or 0"),
        ({**BASE, "DATABASE_URL": "mysql://x"}, "DATABASE_URL must start with"),
        ({**BASE, "SONGBOT_IDLE_TIMEOUT": "-1"}, "SONGBOT_IDLE_TIMEOUT must be between"),
        ({**BASE, "DASHSCOPE_BASE_URL": "http://dashscope.aliyuncs.com/api/v1"}, "DASHSCOPE_BASE_URL must use https"),
        ({**BASE, "DASHSCOPE_BASE_URL": "http://10.0.0.7:8080/api/v1"}, "would send the API key in clear text"),
    ],
)
def test_bad_settings_are_one_sentence(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert "sk-secret-key-value" not in text


def test_defaults_and_simulation() -> None:
    settings = load_settings(BASE)
    assert settings.dashscope_base_url == "https://dashscope.aliyuncs.com/api/v1"
    assert settings.fun_music_model == "fun-music-v1" and not settings.simulated
    assert load_settings({"DISCORD_TOKEN": "t"}).simulated  # no key: the simulator
    assert load_settings({**BASE, "SONGBOT_SIMULATE": "1"}).simulated
    assert load_settings({"DASHSCOPE_API_KEY": "k"}, require_discord=False).discord_token.reveal() == ""


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/api/v1", "http://localhost/api/v1", "http://[::1]:9/v1"])
def test_plain_http_is_allowed_to_this_machine(url: str) -> None:
    assert load_settings({**BASE, "DASHSCOPE_BASE_URL": url}).dashscope_base_url == url


def test_secrets_never_show() -> None:
    settings = load_settings(BASE)
    for text in (repr(settings), str(settings), f"{settings.dashscope_api_key}", repr(Secret("abc"))):
        assert "sk-secret-key-value" not in text and "discord-token-value" not in text


def test_log_lines_are_redacted() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s token=%s", ("sk-secret-key-value", "t"), None)
    try:
        raise RuntimeError("failed with discord-token-value")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter(["sk-secret-key-value", "discord-token-value"]).filter(record)
    assert record.getMessage() == f"key={REDACTED} token=t"
    assert record.exc_text is not None
    assert "discord-token-value" not in record.exc_text and REDACTED in record.exc_text
