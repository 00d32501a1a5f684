"""The operator port: /healthz and /metrics over a real socket, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from services.health import HealthServer
from services.metrics import Metrics
from services.offline.discord import FakeDiscord
from services.offline.simulator import Scenario
from tests.support.e2e import TOKEN, e2e_env, running_bot, wait_for_job
from tests.support.processes import run_bot_command
from tests.support.sim_fixtures import running_simulator

ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_healthz_is_200_when_every_check_passes_and_503_naming_the_one_that_fails() -> None:
    database_up = True

    async def database() -> bool:
        return database_up

    async def gateway() -> bool:
        raise ConnectionError("shard 0 closed")

    metrics = Metrics()
    server = HealthServer(metrics, {"database": database}, port=0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"ok": True, "checks": {"event_loop": True, "database": True}}
            database_up = False
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["database"] is False
            database_up = True
            server.checks["gateway"] = gateway
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"] == {"event_loop": True, "database": True, "gateway": False}
    finally:
        await server.close()


async def test_a_check_that_hangs_fails_instead_of_hanging_the_probe() -> None:
    async def stuck() -> bool:
        await asyncio.Event().wait()
        return True

    server = HealthServer(Metrics(), {"database": stuck}, port=0, check_timeout_s=0.05)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/healthz") as r:
            assert r.status == 503
    finally:
        await server.close()


async def test_metrics_are_scraped_in_prometheus_format_with_fresh_database_values() -> None:
    metrics = Metrics()
    scrapes = 0

    async def refresh(m: Metrics) -> None:
        nonlocal scrapes
        scrapes += 1
        m.queue_depth.set(3)
        m.budget_used.set(120.5 * scrapes)

    async def broken(m: Metrics) -> None:
        raise RuntimeError("database down")

    metrics.on_scrape(refresh)
    metrics.on_scrape(broken)  # a failing refresh must not take /metrics down
    metrics.song_ended("delivered")
    metrics.song_ended("delivered")
    metrics.song_ended("failed")
    metrics.dashscope_error("Throttling.RateQuota")
    metrics.dashscope_error(None)
    metrics.generation.observe(12.0)
    server = HealthServer(metrics, {}, port=0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                second = await resp.text()
    finally:
        await server.close()
    samples = _samples(text)
    assert samples[("songbot_songs_total", (("outcome", "delivered"),))] == 2
    assert samples[("songbot_songs_total", (("outcome", "failed"),))] == 1
    assert samples[("songbot_songs_total", (("outcome", "cancelled"),))] == 0  # exported before it ever happens
    assert samples[("songbot_dashscope_errors_total", (("code", "Throttling.RateQuota"),))] == 1
    assert samples[("songbot_dashscope_errors_total", (("code", "unknown"),))] == 1
    assert samples[("songbot_queue_depth", ())] == 3
    assert samples[("songbot_budget_used_seconds", ())] == 120.5
    assert samples[("songbot_generation_seconds_count", ())] == 1
    assert _samples(second)[("songbot_budget_used_seconds", ())] == 241.0  # read again at each scrape


async def test_discord_429s_are_counted_through_the_http_trace() -> None:
    from aiohttp import web

    async def limited(request: web.Request) -> web.Response:
        return web.Response(status=429, text="{}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/api", limited)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    metrics = Metrics()
    try:
        async with aiohttp.ClientSession(trace_configs=[metrics.discord_trace()]) as session:
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/api") as resp:
                    assert resp.status == 429
    finally:
        await runner.cleanup()
    assert metrics.value("songbot_discord_rate_limited_total") == 2


async def test_loop_lag_is_sampled() -> None:
    metrics = Metrics()
    task = asyncio.create_task(metrics.sample_loop_lag(interval_s=0.01))
    try:
        for _ in range(500):
            if metrics.value("songbot_event_loop_lag_seconds_count") >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert metrics.value("songbot_event_loop_lag_seconds_count") >= 3


async def test_the_running_bot_serves_health_and_metrics(tmp_path: Path) -> None:
    """The real bot with SONGBOT_HEALTH_PORT: healthy once connected; a delivered song, a refused one and a
    Discord 429 show in /metrics as Prometheus reads them."""
    async with running_bot(tmp_path, SONGBOT_HEALTH_PORT="0", SONGBOT_GLOBAL_DAILY_SECONDS="5000") as h:
        port = h.bot.health_port
        assert port is not None
        await h.configure(cooldown=0)
        h.fake.fail_next("PATCH", ORIGINAL, 429, retry_after=0.05)  # with Via: discord.py waits and retries it
        h.sim.scenario = Scenario(duration_s=3.0, pre_error="InternalError", pre_error_times=1)  # retried, then fine
        iid = await h.song({"prompt": "a calm song about rain"})
        assert (await h.wait_final(iid)).attachments
        h.sim.scenario = Scenario(duration_s=2.0, mid_error="DataInspectionFailed")
        iid = await h.song({"prompt": "a second song about rain"})
        assert (await h.wait_final(iid)).content.startswith("❌")
        await h.wait_job_status((await wait_for_job(h)).id, "failed")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["checks"] == {"event_loop": True, "database": True, "gateway": True}
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                samples = _samples(await resp.text())
    assert samples[("songbot_songs_total", (("outcome", "delivered"),))] == 1
    assert samples[("songbot_songs_total", (("outcome", "failed"),))] == 1
    assert samples[("songbot_dashscope_errors_total", (("code", "DataInspectionFailed"),))] == 1
    assert samples[("songbot_dashscope_errors_total", (("code", "InternalError"),))] == 1  # retried ones count too
    assert samples[("songbot_generation_seconds_count", ())] == 1
    assert samples[("songbot_delivery_seconds_count", ())] == 1
    assert samples[("songbot_queue_wait_seconds_count", ())] == 2
    assert samples[("songbot_queue_depth", ())] == 0
    assert samples[("songbot_budget_limit_seconds", ())] == 5000
    assert samples[("songbot_budget_used_seconds", ())] >= 3  # the delivered song, and what the failed one streamed
    assert samples[("songbot_discord_rate_limited_total", ())] >= 1


async def test_no_health_port_unless_asked(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as h:
        assert h.bot.health_port is None
        assert h.bot.metrics.value("songbot_songs_total", outcome="delivered") == 0


async def test_a_health_port_in_use_stops_the_start_in_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_simulator() as sim, FakeDiscord(token=TOKEN) as fake:
            env = e2e_env(sim, fake, tmp_path, SONGBOT_HEALTH_PORT=str(port))
            code, out, err = await run_bot_command(env=env)
    lines = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert code == 1, out + err
    assert lines == [lines[-1]] and f"The health port 127.0.0.1:{port} cannot be opened" in lines[0], out + err
    assert "Traceback" not in out + err
