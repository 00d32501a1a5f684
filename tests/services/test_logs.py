"""LOG_FORMAT=json: one JSON object per line, with the job, server, DashScope request and error ids as fields,
redaction still applied; plain text stays the default."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.logs import JsonFormatter, bind_log_context, log_context
from services.offline.simulator import Scenario
from services.settings import load_settings
from tests.support.e2e import TOKEN, LogCapture, bot_logging, error_id_of, running_bot, wait_for_job
from tests.support.sim_fixtures import SIM_KEY


@pytest.fixture
def json_logs() -> Iterator[LogCapture]:
    """The bot's own set-up (as ``python bot.py`` calls it) in JSON format, undone afterwards."""
    with bot_logging("json") as capture:
        yield capture


def objects(capture: LogCapture) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capture.lines]


def test_log_format_setting() -> None:
    base = {"DISCORD_TOKEN": "t"}
    assert load_settings(base).log_format == "plain"
    assert load_settings({**base, "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(Exception, match="LOG_FORMAT must be one of plain, json"):
        load_settings({**base, "LOG_FORMAT": "xml"})


def test_json_lines_carry_context_fields_and_tracebacks(json_logs: LogCapture) -> None:
    log = logging.getLogger("songbot.test")
    with log_context(job_id=7, guild_id=42):
        log.info("inside %s", "job")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed", extra={"error_id": "abc123"})
    log.warning('outside "quoted"\nsecond line')
    inside, failed, outside = objects(json_logs)
    assert inside["message"] == "inside job" and inside["level"] == "INFO" and inside["logger"] == "songbot.test"
    assert inside["job_id"] == 7 and inside["guild_id"] == 42 and "error_id" not in inside
    assert inside["time"].endswith("Z")
    assert failed["error_id"] == "abc123" and failed["job_id"] == 7
    assert "RuntimeError: boom" in failed["exc"]
    assert outside["message"] == 'outside "quoted"\nsecond line'
    assert "job_id" not in outside
    assert all("\n" not in line for line in json_logs.lines)  # one object per line


def test_json_lines_are_redacted(json_logs: LogCapture) -> None:
    log = logging.getLogger("songbot.test")
    try:
        raise RuntimeError(f"failed with {SIM_KEY}")
    except RuntimeError:
        log.exception("token=%s", TOKEN)
    text = "\n".join(json_logs.lines)
    assert TOKEN not in text and SIM_KEY not in text
    (line,) = objects(json_logs)
    assert "[REDACTED]" in line["message"] and "[REDACTED]" in line["exc"]


def test_unknown_context_field_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown log context fields"), log_context(user_id=1):
        pass


async def test_context_follows_each_task_alone() -> None:
    formatter = JsonFormatter()
    seen: dict[int, dict[str, Any]] = {}

    async def job(job_id: int) -> None:
        with log_context(job_id=job_id):
            await asyncio.sleep(0)
            bind_log_context(request_id=f"req-{job_id}")
            await asyncio.sleep(0)
            record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
            seen[job_id] = json.loads(formatter.format(record))

    await asyncio.gather(job(1), job(2))
    assert seen[1]["request_id"] == "req-1" and seen[2]["request_id"] == "req-2"
    assert seen[1]["job_id"] == 1 and seen[2]["job_id"] == 2


async def test_a_failed_song_logs_its_ids_as_fields(tmp_path: Path, json_logs: LogCapture) -> None:
    """The real bot, a song that DashScope refuses mid-stream: the failure line carries the job, the server, the
    request id DashScope gave and the error id the member was shown."""
    async with running_bot(tmp_path, scenario=Scenario(duration_s=2.0, mid_error="DataInspectionFailed")) as h:
        iid = await h.song({"prompt": "a calm song about rain"})
        final = await h.wait_final(iid)
        shown_error_id = error_id_of(final.content)
        job = await wait_for_job(h)
    lines = objects(json_logs)
    failure = [line for line in lines if line.get("error_id") == shown_error_id]
    assert failure, [line for line in lines if line["level"] == "WARNING"]
    assert failure[0]["job_id"] == job.id
    assert failure[0]["guild_id"] == h.fake.guild.id
    assert failure[0]["request_id"] == h.sim.requests[-1]["request_id"]
    job_lines = [line for line in lines if line.get("job_id") == job.id]
    assert len(job_lines) >= 2  # not only the failure: every line the job's task logged
