"""What an operator graphs and alerts on, in Prometheus' format (``prometheus_client``).

One :class:`Metrics` per process, each with its own registry (so tests, and two bots in one process, never share
counters). The job manager, the delivery code and the HTTP trace feed it; :mod:`services.health` serves it on
``/metrics``. Values that live in the database (queue depth, today's budget) are read when Prometheus scrapes, by
the ``refresh`` callbacks, so every process of a deployment reports the same truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from services.policy import Policy
    from services.store import Store

log = logging.getLogger(__name__)

# A song takes tens of seconds to minutes: buckets that tell "quick" from "slow" from "stuck".
SONG_SECONDS_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OUTCOMES = ("delivered", "failed", "cancelled", "interrupted")
WAITING = ("accepted", "queued")
ACTIVE = ("generating", "processing", "delivering")

Refresh = Callable[["Metrics"], Awaitable[None]]


class Metrics:
    """The process's counters, gauges and histograms, named ``songbot_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.songs = Counter("songbot_songs", "Songs that ended, by outcome.", ["outcome"], registry=reg)
        for outcome in OUTCOMES:
            self.songs.labels(outcome)  # every outcome is exported from the start, at 0
        self.queue_depth = Gauge("songbot_queue_depth", "Songs waiting for a generation slot.", registry=reg)
        self.generating = Gauge("songbot_generating", "Songs being generated or delivered now.", registry=reg)
        self.queue_wait = Histogram(
            "songbot_queue_wait_seconds",
            "Time from acceptance to the start of generation.",
            buckets=SONG_SECONDS_BUCKETS,
            registry=reg,
        )
        self.generation = Histogram(
            "songbot_generation_seconds",
            "Time DashScope took to stream one song.",
            buckets=SONG_SECONDS_BUCKETS,
            registry=reg,
        )
        self.delivery = Histogram(
            "songbot_delivery_seconds",
            "Time from the last audio byte to the song posted (transcode + upload).",
            buckets=SONG_SECONDS_BUCKETS,
            registry=reg,
        )
        self.dashscope_errors = Counter(
            "songbot_dashscope_errors", "Errors DashScope answered, by its error code.", ["code"], registry=reg
        )
        self.discord_rate_limited = Counter(
            "songbot_discord_rate_limited", "HTTP 429 answers from Discord's API.", registry=reg
        )
        self.loop_lag = Histogram(
            "songbot_event_loop_lag_seconds",
            "How late the event loop ran a timer it was given.",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.budget_used = Gauge(
            "songbot_budget_used_seconds",
            "Seconds of audio counted against the operator's budget today (UTC).",
            registry=reg,
        )
        self.budget_limit = Gauge(
            "songbot_budget_limit_seconds",
            "The operator's daily budget in seconds of audio (absent: unlimited).",
            registry=reg,
        )
        self._refreshers: list[Refresh] = []

    def on_scrape(self, refresh: Refresh) -> None:
        """Run ``refresh`` before each scrape (to read gauges whose truth is in the database)."""
        self._refreshers.append(refresh)

    async def render(self) -> bytes:
        """The exposition text; a refresher that fails leaves its gauges at their last value (and is logged)."""
        for refresh in self._refreshers:
            try:
                await refresh(self)
            except Exception:
                log.warning("metrics: a refresh failed; serving the last values", exc_info=True)
        return generate_latest(self.registry)

    def song_ended(self, outcome: str) -> None:
        self.songs.labels(outcome).inc()

    def dashscope_error(self, code: str | None) -> None:
        self.dashscope_errors.labels(code or "unknown").inc()

    def discord_trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace for discord.py's session (``Client(http_trace=...)``): counts Discord's 429s, including
        the ones discord.py retries by itself and never raises."""
        trace = aiohttp.TraceConfig()

        async def on_request_end(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            if params.response.status == 429:
                self.discord_rate_limited.inc()

        trace.on_request_end.append(on_request_end)
        return trace

    async def sample_loop_lag(self, interval_s: float = 0.5) -> None:
        """Forever: sleep ``interval_s`` and record how much later than asked the loop woke us."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - started - interval_s))

    def watch_database(self, store: Store, policy: Policy) -> None:
        """Read the queue and today's budget from the database at each scrape (true across all processes)."""

        async def refresh(metrics: Metrics) -> None:
            counts = await store.jobs_by_status()
            metrics.queue_depth.set(sum(counts.get(status, 0) for status in WAITING))
            metrics.generating.set(sum(counts.get(status, 0) for status in ACTIVE))
            usage = await policy.global_usage()
            metrics.budget_used.set(usage.billed_seconds)
            if usage.seconds_limit is not None:
                metrics.budget_limit.set(usage.seconds_limit)

        self.on_scrape(refresh)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (for tests and the doctor); 0.0 when it has not been observed."""
        found: Any = self.registry.get_sample_value(name, labels or None)
        return float(found) if found is not None else 0.0
