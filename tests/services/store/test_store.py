"""The store on a real SQLite file (and on PostgreSQL when TEST_DATABASE_URL is set)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cogs._words import jump_url, setting_allowed, setting_description, setting_error_text, setting_value
from services.errors import ConfigError, InvalidInput
from services.guild_settings import (
    DEFAULTS,
    SCALAR_NAMES,
    SETTINGS,
    SPECS,
    GuildSettings,
    InvalidSetting,
    validate_setting,
)
from services.store import JobStateError, JobStatus, Store
from services.store.engine import Database
from services.store.migrations import LATEST, MIGRATIONS
from services.store.schema import metadata, schema_version
from tests.support.clock import FakeClock
from tests.support.store_fixtures import DbTarget

GUILD = 111
MOD = 900
MEMBER = 501

# A valid non-default value, an out-of-range/invalid value, and the exact words of the refusal, per setting.
CASES: dict[str, tuple[object, object, str]] = {
    "enabled": (False, "maybe", "enabled must be true or false; got 'maybe'."),
    "cooldown": (90, 90000, "cooldown must be between 0 and 86400 seconds; got 90000."),
    "member_daily_songs": (7, 1001, "member_daily_songs must be between 0 and 1000 songs; got 1001."),
    "server_daily_songs": (500, -1, "server_daily_songs must be between 0 and 100000 songs; got -1."),
    "server_daily_minutes": (30, 100001, "server_daily_minutes must be between 0 and 100000 minutes; got 100001."),
    "max_concurrent": (5, 0, "max_concurrent must be between 1 and 20 songs; got 0."),
    "max_queued": (100, 0, "max_queued must be between 1 and 1000 songs; got 0."),
    "default_voice": ("male", "robot", "default_voice must be one of female, male; got 'robot'."),
    "default_format": ("ogg", "flac", "default_format must be one of mp3, wav, ogg; got 'flac'."),
    "watermark": ("never", "sometimes", "watermark must be one of always, never, member; got 'sometimes'."),
    "private_allowed": (False, 3, "private_allowed must be true or false; got 3."),
}


def test_every_settable_setting_has_a_case() -> None:
    assert set(CASES) == set(SCALAR_NAMES)
    assert [s.name for s in SETTINGS][-2:] == ["channels", "roles"]


@pytest.mark.parametrize("name", sorted(CASES))
async def test_each_setting_set_refused_and_shown(store: Store, name: str) -> None:
    good, bad, words = CASES[name]
    before, after = await store.update_guild_settings(GUILD, MOD, {name: good})
    assert before == DEFAULTS
    assert after.value(name) == good
    assert (await store.get_guild_settings(GUILD)).value(name) == good
    shown = {spec.name: (value, is_default) for spec, value, is_default in after.rows()}
    assert shown[name] == (good, False)
    assert all(is_default for key, (_, is_default) in shown.items() if key != name)

    with pytest.raises(InvalidInput) as refused:
        await store.update_guild_settings(GUILD, MOD, {name: bad})
    assert isinstance(refused.value, InvalidSetting) and setting_error_text(refused.value) == words
    assert (await store.get_guild_settings(GUILD)).value(name) == good
    entries = await store.audit_log(GUILD)
    assert [(e.action, e.key, e.before, e.after, e.actor_id) for e in entries] == [
        ("set", name, SPECS[name].default, good, MOD)
    ]


def refusal_words(name: str, value: object) -> str:
    """What a moderator reads when ``value`` is refused for setting ``name``."""
    with pytest.raises(InvalidSetting) as refused:
        validate_setting(name, value)
    return setting_error_text(refused.value)


def test_text_values_are_parsed_like_a_moderator_types_them() -> None:
    assert validate_setting("enabled", "Off") is False
    assert validate_setting("private_allowed", "yes") is True
    assert validate_setting("cooldown", " 120 ") == 120
    assert validate_setting("default_voice", "Male") == "male"
    assert validate_setting("channels", ["12", 13, 12]) == (12, 13)
    assert "whole number between 0 and 86400" in refusal_words("cooldown", "soon")
    assert "whole number" in refusal_words("cooldown", True)
    assert "There is no setting called 'colour'" in refusal_words("colour", 1)
    assert "at most 100 channels" in refusal_words("channels", range(1, 102))
    assert "positive whole numbers" in refusal_words("roles", [0])


def test_spec_describes_and_formats_values() -> None:
    assert setting_allowed(SPECS["cooldown"]) == "0–86400 seconds"
    assert setting_value(SPECS["cooldown"], 60) == "60 seconds"
    assert setting_allowed(SPECS["watermark"]) == "always, never, member"
    assert setting_value(SPECS["enabled"], False) == "false"
    assert setting_value(SPECS["channels"], ()) == "all"
    assert setting_value(SPECS["channels"], (1, 2)) == "<#1>, <#2>"
    assert setting_value(SPECS["roles"], (3,)) == "<@&3>"
    assert all(setting_description(spec).endswith(".") for spec in SETTINGS)


async def test_a_change_is_all_or_nothing_and_a_no_op_is_not_audited(store: Store) -> None:
    with pytest.raises(InvalidInput, match="cooldown"):
        await store.update_guild_settings(GUILD, MOD, {"enabled": False, "cooldown": -5})
    assert await store.get_guild_settings(GUILD) == DEFAULTS
    before, after = await store.update_guild_settings(GUILD, MOD, {"cooldown": 60, "enabled": True})
    assert before == after == DEFAULTS
    assert await store.audit_log(GUILD) == []


async def test_settings_are_per_server_and_default_values_are_not_stored(store: Store) -> None:
    await store.update_guild_settings(GUILD, MOD, {"cooldown": 5, "watermark": "always"})
    assert await store.get_guild_settings(GUILD + 1) == DEFAULTS
    await store.update_guild_settings(GUILD, MOD, {"cooldown": 60})
    async with store.read() as tx:
        assert await tx.overrides(GUILD) == {"watermark": "always"}


async def test_channels_add_remove_clear(store: Store) -> None:
    before, after = await store.add_channel(GUILD, MOD, 10)
    assert (before.channels, after.channels) == ((), (10,))
    _, after = await store.add_channel(GUILD, MOD, 20)
    assert after.channels == (10, 20)
    before, after = await store.add_channel(GUILD, MOD, 20)  # already there: no change, no audit row
    assert before == after
    before, after = await store.remove_channel(GUILD, MOD, 10)
    assert (before.channels, after.channels) == ((10, 20), (20,))
    before, after = await store.clear_channels(GUILD, MOD)
    assert (before.channels, after.channels) == ((20,), ())
    assert (await store.get_guild_settings(GUILD)).channels == ()
    entries = await store.audit_log(GUILD)
    assert [(e.action, e.before, e.after) for e in reversed(entries)] == [
        ("channels.add", [], [10]),
        ("channels.add", [10], [10, 20]),
        ("channels.remove", [10, 20], [20]),
        ("channels.clear", [20], []),
    ]
    with pytest.raises(InvalidInput):
        await store.add_channel(GUILD, MOD, -3)


async def test_roles_add_remove_clear(store: Store) -> None:
    await store.add_role(GUILD, MOD, 7)
    _, after = await store.add_role(GUILD, MOD, 8)
    assert after.roles == (7, 8)
    _, after = await store.remove_role(GUILD, MOD, 7)
    assert after.roles == (8,)
    _, after = await store.remove_role(GUILD, MOD, 12345)
    assert after.roles == (8,)
    _, after = await store.clear_roles(GUILD, MOD)
    assert after.roles == ()
    actions = [e.action for e in reversed(await store.audit_log(GUILD))]
    assert actions == ["roles.add", "roles.add", "roles.remove", "roles.clear"]


async def test_reset_restores_defaults_with_one_audit_row_per_setting(store: Store, clock: FakeClock) -> None:
    await store.update_guild_settings(GUILD, MOD, {"cooldown": 5, "enabled": False})
    await store.add_role(GUILD, MOD, 4)
    clock.advance(60)
    before, after = await store.reset_guild_settings(GUILD, MOD + 1)
    assert before == GuildSettings(cooldown=5, enabled=False, roles=(4,))
    assert after == DEFAULTS
    assert await store.get_guild_settings(GUILD) == DEFAULTS
    resets = [e for e in await store.audit_log(GUILD) if e.action == "reset"]
    assert sorted((e.key, e.before, e.after) for e in resets) == [
        ("cooldown", 5, 60),
        ("enabled", False, True),
        ("roles", [4], []),
    ]
    assert {(e.actor_id, e.at) for e in resets} == {(MOD + 1, clock.now())}
    async with store.read() as tx:
        assert await tx.overrides(GUILD) == {}


async def test_audit_log_is_newest_first_and_limited(store: Store, clock: FakeClock) -> None:
    for seconds in range(1, 6):
        await store.update_guild_settings(GUILD, MOD, {"cooldown": seconds})
        clock.advance(1)
    entries = await store.audit_log(GUILD, limit=3)
    assert [e.after for e in entries] == [5, 4, 3]
    assert entries[0].at > entries[1].at


async def test_settings_survive_reopening(db_target: DbTarget, clock: FakeClock) -> None:
    first = await db_target.open(clock)
    await first.update_guild_settings(GUILD, MOD, {"cooldown": 77})
    await first.add_channel(GUILD, MOD, 5)
    await first.close()
    second = await db_target.open(clock)
    try:
        assert await second.get_guild_settings(GUILD) == GuildSettings(cooldown=77, channels=(5,))
    finally:
        await second.close()


# --- migrations -------------------------------------------------------------------------------------------------


async def test_migrations_build_an_empty_database_and_reopen_is_idempotent(
    db_target: DbTarget, clock: FakeClock
) -> None:
    if db_target.backend == "sqlite":
        assert not (await _exists(db_target.url))
    first = await db_target.open(clock)
    assert await first.schema_version() == LATEST
    async with first.read() as tx:
        salt = await tx.conn.scalar(sa.text("SELECT value FROM meta WHERE key = 'member_key_salt'"))
        rows = (await tx.conn.execute(sa.text("SELECT version, name FROM schema_version"))).all()
    assert [tuple(r) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
    await first.create_job(guild_id=1, channel_id=2, user_id=3, prompt="p", lyrics=None, options={})
    await first.close()

    second = await db_target.open(clock)
    try:
        async with second.read() as tx:
            assert await tx.conn.scalar(sa.text("SELECT value FROM meta WHERE key = 'member_key_salt'")) == salt
            assert await tx.conn.scalar(sa.text("SELECT count(*) FROM schema_version")) == LATEST
        assert (await second.get_job(1)) is not None
    finally:
        await second.close()


async def _exists(url: str) -> bool:
    import asyncio

    from services.store.engine import sqlite_path

    path = sqlite_path(url)
    assert path is not None
    return await asyncio.to_thread(path.exists)


async def test_schema_module_matches_what_the_migrations_built(store: Store) -> None:
    def columns(sync: sa.Connection) -> dict[str, dict[str, bool]]:
        inspector = sa.inspect(sync)
        return {
            table: {c["name"]: bool(c["nullable"]) for c in inspector.get_columns(table)}
            for table in inspector.get_table_names()
        }

    async with store.read() as tx:
        built = await tx.conn.run_sync(columns)
    declared = {t.name: {c.name: bool(c.nullable) for c in t.columns} for t in metadata.sorted_tables}
    assert built == declared


async def test_a_newer_database_is_refused(db_target: DbTarget, clock: FakeClock) -> None:
    first = await db_target.open(clock)
    async with first.write() as tx:
        await tx.conn.execute(
            sa.text("INSERT INTO schema_version (version, name, applied_at) VALUES (:v, 'future', :at)"),
            {"v": LATEST + 1, "at": datetime(2030, 1, 1)},
        )
    await first.close()
    with pytest.raises(ConfigError, match=f"schema version {LATEST + 1}, newer than this songbot knows"):
        await db_target.open(clock)


async def test_unknown_database_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="sqlite\\+aiosqlite or postgresql\\+asyncpg"):
        await Database.connect("mysql+aiomysql://localhost/x")


async def test_sqlite_uses_wal_and_foreign_keys(store: Store) -> None:
    if store.backend != "sqlite":
        pytest.skip("SQLite pragmas")
    async with store.read() as tx:
        assert (await tx.conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await tx.conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"


# --- jobs -------------------------------------------------------------------------------------------------------


async def _job(store: Store, *, user: int = MEMBER, guild: int | None = GUILD, prompt: str = "a song") -> int:
    return await store.create_job(
        guild_id=guild, channel_id=42, user_id=user, prompt=prompt, lyrics="la la", options={"format": "mp3"}
    )


async def test_job_lifecycle_moves_forward_only(store: Store, clock: FakeClock) -> None:
    job_id = await _job(store)
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.prompt, job.lyrics, job.options) == (
        JobStatus.ACCEPTED,
        "a song",
        "la la",
        {"format": "mp3"},
    )
    assert job.created_at == clock.now() and job.finished_at is None

    clock.advance(5)
    for status in ("queued", "generating", "generating", "processing", "delivering"):
        job = await store.transition(job_id, status)
        assert job.status == status and job.updated_at == clock.now()
    with pytest.raises(JobStateError, match="cannot go back to queued"):
        await store.transition(job_id, JobStatus.QUEUED)

    expires = clock.now() + timedelta(hours=24)
    job = await store.transition(
        job_id, JobStatus.DELIVERED, request_id="req-1", duration_s=31.5, url="https://x/y.mp3", url_expires_at=expires
    )
    assert (job.status, job.request_id, job.duration_s, job.url_expires_at) == ("delivered", "req-1", 31.5, expires)
    assert job.finished_at == clock.now()
    assert job.url_if_valid(clock.now()) == "https://x/y.mp3"
    assert job.url_if_valid(expires + timedelta(seconds=1)) is None
    for status in JobStatus:
        with pytest.raises(JobStateError, match="already delivered"):
            await store.transition(job_id, status)
    with pytest.raises(JobStateError, match="does not exist"):
        await store.transition(9999, JobStatus.QUEUED)
    with pytest.raises(TypeError, match="user_id"):
        await store.transition(job_id, JobStatus.FAILED, user_id=3)  # type: ignore[call-arg]


async def test_failed_job_keeps_its_error(store: Store) -> None:
    job_id = await _job(store)
    job = await store.transition(job_id, JobStatus.FAILED, error_code="Throttling", error_id="ab12cd34")
    assert (job.status, job.error_code, job.error_id) == (JobStatus.FAILED, "Throttling", "ab12cd34")


async def test_set_message_and_jump_url(store: Store) -> None:
    job_id = await _job(store)
    await store.set_message(job_id, 43, 777)
    job = await store.get_job(job_id)
    assert job is not None and (job.channel_id, job.message_id) == (43, 777)
    assert jump_url(job) == job.jump_url() == f"https://discord.com/channels/{GUILD}/43/777"
    dm = await store.get_job(await _job(store, guild=None))
    assert dm is not None and jump_url(dm) is dm.jump_url() is None
    with pytest.raises(JobStateError):
        await store.set_message(9999, 1, 2)


async def test_history_is_newest_first_per_member_and_server(store: Store, clock: FakeClock) -> None:
    ids = []
    for n, guild in enumerate([GUILD, GUILD + 1, GUILD, None]):
        ids.append(await _job(store, guild=guild, prompt=f"song {n}"))
        clock.advance(10)
    await _job(store, user=MEMBER + 1)
    assert [j.id for j in await store.history(MEMBER)] == list(reversed(ids))
    assert [j.prompt for j in await store.history(MEMBER, GUILD)] == ["song 2", "song 0"]
    assert len(await store.history(MEMBER, limit=2)) == 2
    assert await store.history(12345) == []


async def test_naive_datetimes_are_refused(store: Store) -> None:
    job_id = await _job(store)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        await store.transition(job_id, JobStatus.DELIVERED, url_expires_at=datetime(2030, 1, 1))


async def test_times_come_back_in_utc(store: Store, clock: FakeClock) -> None:
    clock.set(datetime(2026, 3, 1, 23, 59, 59, 250000, tzinfo=UTC))
    job = await store.get_job(await _job(store))
    assert job is not None and job.created_at == clock.now() and job.created_at.tzinfo is UTC


def test_stored_values_that_no_longer_validate_fall_back_to_defaults(caplog: pytest.LogCaptureFixture) -> None:
    from services.guild_settings import from_overrides

    settings = from_overrides({"cooldown": 999999, "colour": "red", "watermark": "never"})
    assert settings == GuildSettings(watermark="never")
    assert "cooldown must be between 0 and 86400" in caplog.text
    assert "'colour'" in caplog.text


async def test_version_1_database_is_upgraded_keeping_what_was_billed(db_target: DbTarget, clock: FakeClock) -> None:
    """A database songbot's version 1 built, with a delivered (committed) and a refunded job, opened by this
    songbot: migrated to version 2 in place; the committed job's seconds become its billed seconds, the refunded
    one's nothing, and the jobs are not marked for erasure."""
    from services.store.migrations import MIGRATIONS

    db = await Database.connect(db_target.url, search_path=db_target.search_path)
    try:
        async with db.write() as conn:
            await conn.run_sync(lambda sync: schema_version.create(sync))
            await conn.run_sync(MIGRATIONS[0].upgrade)
            now = clock.now().replace(tzinfo=None)
            await conn.execute(
                sa.text("INSERT INTO schema_version (version, name, applied_at) VALUES (1, 'initial', :at)"),
                {"at": now},
            )
            for job_id, state in ((1, "committed"), (2, "refunded")):
                await conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, guild_id, channel_id, user_id, member_key, status, created_at, "
                        "updated_at) VALUES (:id, 1, 2, 3, 'k', 'delivered', :at, :at)"
                    ),
                    {"id": job_id, "at": now},
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO reservations (job_id, guild_id, member_key, day, songs, seconds, state, "
                        "updated_at) VALUES (:id, 1, 'k', :day, 1, 45, :state, :at)"
                    ),
                    {"id": job_id, "day": now.date(), "state": state, "at": now},
                )
    finally:
        await db.dispose()
    store = await db_target.open(clock)
    try:
        assert await store.schema_version() == LATEST
        async with store.read() as tx:
            held = [await tx.reservation(i) for i in (1, 2)]
            assert [None if r is None else r.billed_seconds for r in held] == [45, 0]
            erase = await tx.conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE erase_on_finish"))
            assert erase == 0
            assert await tx.global_billed(now.date()) == 45
    finally:
        await store.close()
