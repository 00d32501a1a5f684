"""Load benchmark (not a test): many members send /song at once to one bot process.

The real ``SongBot``, started by its real start path (``bot.start``), against the offline Discord
(``services/offline``) and the Fun-Music simulator, all three in this one process and on its one event loop: every
figure below is therefore pessimistic for the bot, since the fake's and the simulator's own work (multipart
parsing, base64 encoding) lands on the same loop and the same two cores.

The simulator streams a ``--duration`` second mp3 (128 kb/s, the same file for every request) as SSE events of
16 KiB of audio, paced so that one song takes ``--stream-seconds`` to arrive: a stand-in for generation time.
Quotas, cooldowns and the per-server limit are raised in the store before the burst so none is refused.

Printed:

- defer latency p50/p99: from the moment the INTERACTION_CREATE is handed to the gateway to the moment the fake
  receives the type-5 callback (both ``time.monotonic()`` in this process);
- event-loop lag p99: a task sleeping 10 ms in a loop, measuring how late it wakes, during the whole run;
- songs delivered: original responses that ended with the audio attached;
- peak RSS of this process (psutil, sampled every 20 ms), and of its ffmpeg children at the same moments;
- the bot's own overhead per song: from the simulator writing a stream's final event to the fake storing the
  message with the uploaded audio (decode check, fit, waveform, upload).

    .venv/bin/python bench/load.py [--members 100] [--concurrency 8] [--duration 30] [--stream-seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import logging
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bench.sampling import RssSampler, machine
from bot import point_at_discord
from services.logs import setup_logging
from services.offline.discord import FakeDiscord, point_discord_py_at
from services.offline.simulator import FunMusicSimulator, Scenario, cached_audio
from services.settings import load_settings
from tests.support.e2e import TOKEN, Harness, LogCapture, e2e_env, started_bot
from tests.support.sim_fixtures import SIM_KEY

CHUNK_BYTES = 16384
MP3_BYTES_PER_SECOND = 128_000 // 8
PROMPT = "an upbeat summer folk song about a road trip, take {n}"


class TimedSimulator(FunMusicSimulator):
    """The simulator, noting when each stream's final event went out (monotonic seconds, by request id)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished: dict[str, float] = {}

    async def _stream(self, request: web.Request, song: Any) -> web.StreamResponse:
        response = await super()._stream(request, song)
        self.finished[song.request_id] = time.monotonic()
        return response


class LagSampler:
    """How late a 10 ms sleep wakes up, sampled for as long as it runs."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.lags.append(max(0.0, loop.time() - start - self.interval_s))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Results:
    members: int
    wall_s: float = 0.0
    defer_s: list[float] = field(default_factory=list)
    late_defers: int = 0
    delivered: int = 0
    overhead_s: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)
    peak_rss: int = 0
    peak_children_rss: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    burst_profile: list[tuple[str, float]] = field(default_factory=list)


PACKAGES = (
    "sqlalchemy",
    "aiosqlite",
    "greenlet",
    "discord",
    "aiohttp",
    "asyncio",
    "services/offline",
    "services",
    "cogs",
)


def by_package(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    """The loop thread's own time during the burst, summed by package (cProfile's tottime)."""
    totals: dict[str, float] = collections.defaultdict(float)
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, tottime, *_rest) in stats.items():
        where = f"{filename} {name}"
        package = next((p for p in PACKAGES if f"/{p}/" in where or f"/{p}." in where or f"<{p} " in where), None)
        if package is None:
            package = "waiting in epoll" if "epoll" in name else other_label(filename, name)
        totals[package] += tottime
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def other_label(filename: str, name: str) -> str:
    if filename == "~":  # a builtin: name it by what it is
        for word in ("socket", "json", "SimpleQueue", "greenlet", "sqlite", "select", "Context"):
            if word in name:
                return f"builtin {word}"
        return "other builtins"
    parts = filename.rsplit("/", 2)
    return "other: " + (parts[-2] if len(parts) > 1 else filename)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextlib.asynccontextmanager
async def bot_under_load(work: Path, args: argparse.Namespace) -> AsyncIterator[tuple[Harness, TimedSimulator]]:
    """Simulator, offline Discord and the real bot, with the bot's own logging set-up (INFO, to a file)."""
    audio_bytes = int(args.duration * MP3_BYTES_PER_SECOND)
    chunks = max(1, -(-audio_bytes // CHUNK_BYTES))
    scenario = Scenario(duration_s=args.duration, chunk_bytes=CHUNK_BYTES, chunk_delay_s=args.stream_seconds / chunks)
    sim = TimedSimulator(api_key=SIM_KEY, scenario=scenario)
    await sim.start()
    # render the song once now, as a warm simulator would have it: not eight ffmpeg renders in the first batch
    await cached_audio(scenario.duration_s, scenario.sample_rate, scenario.channels, "mp3")
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    env = e2e_env(
        sim,
        fake,
        work,
        LOG_LEVEL="INFO",
        MAX_CONCURRENT_GENERATIONS=str(args.concurrency),
        SONGBOT_QUEUE_SIZE=str(max(args.members, 1)),
        SONGBOT_ESTIMATED_SONG_SECONDS=str(round(args.duration)),
        SONGBOT_TOTAL_DEADLINE="600",
        SONGBOT_IDLE_TIMEOUT="60",
        SONGBOT_REQUESTS_PER_MINUTE="10000",
    )
    settings = load_settings(env)
    log_file = args.log or work / "bot.log"
    handler = setup_logging(settings.log_level, settings.secrets(), handler=logging.FileHandler(log_file))
    try:
        with point_discord_py_at(fake):
            point_at_discord(settings)
            async with started_bot(settings, fake, sim, work, LogCapture()) as harness:
                yield harness, sim
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        await fake.close()
        await sim.close()


async def raise_limits(h: Harness, members: int) -> None:
    """Nobody is refused: no cooldown, quotas far above the burst, the per-server limit at its maximum."""
    await h.store.update_guild_settings(
        h.fake.guild.id,
        h.fake.guild.owner_id,
        {
            "cooldown": 0,
            "member_daily_songs": 1000,
            "server_daily_songs": 100000,
            "server_daily_minutes": 100000,
            "max_concurrent": 20,
        },
    )


def delivered_at(h: Harness, iid: int) -> tuple[float, str] | None:
    """(when the fake stored the message with the audio, the request id it shows), if it was delivered."""
    for snapshot in h.fake.edits(iid):
        if any(a.filename.endswith(".mp3") for a in snapshot.attachments):
            fields = {f["name"]: f["value"] for f in snapshot.embeds[0].get("fields", [])} if snapshot.embeds else {}
            return snapshot.at, str(fields.get("Request id", "")).strip("`")
    return None


async def wait_for_jobs(h: Harness, ids: list[int], timeout: float) -> None:
    """Until every member has a final answer (a song or a failure) and no job is left. A poll: the last job ends
    with no request for the fake to wake ``wait_until`` on, and a check every 0.1 s adds nothing measurable. (Under a
    burst /song answers before its checks, so a job may not exist yet when every defer has arrived.)"""

    def answered(iid: int) -> bool:
        message = h.fake.original(iid)
        return message is not None and (bool(message.attachments) or message.content.startswith("❌"))

    jobs = h.bot.services.jobs
    async with asyncio.timeout(timeout):
        while jobs.active_jobs > 0 or not all(answered(iid) for iid in ids):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> Results:
    results = Results(members=args.members)
    with tempfile.TemporaryDirectory(prefix="songbot-load-") as tmp, RssSampler(children=True) as rss:
        work = Path(tmp)
        async with bot_under_load(work, args) as (h, sim):
            await raise_limits(h, args.members)
            users = [h.fake.add_user(f"member{n}") for n in range(args.members)]
            payloads = [h.fake.slash("song", {"prompt": PROMPT.format(n=n)}, user=u) for n, u in enumerate(users)]
            lag = LagSampler()
            lag.start()
            started: dict[int, float] = {}

            async def send(payload: dict[str, Any]) -> None:
                started[int(payload["id"])] = time.monotonic()
                await h.fake.send_interaction(payload)

            profiler = cProfile.Profile() if args.profile else None
            t0 = time.monotonic()
            if profiler is not None:
                profiler.enable()
            await asyncio.gather(*(send(p) for p in payloads))
            ids = [int(p["id"]) for p in payloads]
            for iid in ids:
                callback = await h.fake.wait_for_callback(iid, timeout=60)
                results.defer_s.append(callback.at - started[iid])
                results.late_defers += callback.age > 3.0
            if profiler is not None:
                profiler.disable()
                results.burst_profile = by_package(profiler)
            await wait_for_jobs(h, ids, args.timeout)
            results.wall_s = time.monotonic() - t0
            await lag.stop()
            results.lags_s = lag.lags
            for iid in ids:
                done = delivered_at(h, iid)
                if done is None:
                    continue
                results.delivered += 1
                at, request_id = done
                if request_id in sim.finished:
                    results.overhead_s.append(at - sim.finished[request_id])
            for job_id in range(1, args.members + 1):
                job = await h.store.get_job(job_id)
                status = str(job.status) if job else "missing"
                results.statuses[status] = results.statuses.get(status, 0) + 1
    results.peak_rss, results.peak_children_rss = rss.peak, rss.peak_children
    return results


def report(args: argparse.Namespace, r: Results) -> None:
    ms = 1000.0

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    defer_p99 = percentile(r.defer_s, 99)
    lag_p99 = percentile(r.lags_s, 99)
    overhead_p50 = percentile(r.overhead_s, 50)
    print(f"machine: {machine()}")
    print(
        f"load: {args.members} members at once, MAX_CONCURRENT_GENERATIONS={args.concurrency}, "
        f"{args.duration:.0f} s mp3 songs streamed in {args.stream_seconds:.1f} s each; bot, offline Discord and "
        "simulator in one process"
    )
    print(f"wall time: {r.wall_s:.1f} s; job states: {r.statuses}")
    print(
        f"defer latency: p50 {percentile(r.defer_s, 50) * ms:.0f} ms, p99 {defer_p99 * ms:.0f} ms, "
        f"max {max(r.defer_s, default=0) * ms:.0f} ms (target p99 < 250 ms: {verdict(defer_p99 < 0.25)}); "
        f"callbacks after Discord's 3 s: {r.late_defers}"
    )
    print(
        f"event-loop lag: p50 {percentile(r.lags_s, 50) * ms:.1f} ms, p99 {lag_p99 * ms:.1f} ms, "
        f"max {max(r.lags_s, default=0) * ms:.0f} ms over {len(r.lags_s)} samples "
        f"(target p99 < 50 ms: {verdict(lag_p99 < 0.05)})"
    )
    print(f"songs delivered: {r.delivered}/{r.members} (target: all: {verdict(r.delivered == r.members)})")
    rss_ok = verdict(r.peak_rss < 400 * 2**20)
    print(
        f"peak RSS: {r.peak_rss / 2**20:.0f} MB for this process (target < 400 MB: {rss_ok}); "
        f"its ffmpeg children at most {r.peak_children_rss / 2**20:.0f} MB together"
    )
    if r.burst_profile:
        total = sum(seconds for _, seconds in r.burst_profile)
        top, rest = r.burst_profile[:8], sum(seconds for _, seconds in r.burst_profile[8:])
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in top) + f", the rest {rest:.2f} s"
        print(f"loop thread during the burst (cProfile, {total:.2f} s): {parts}")
    if r.overhead_s:
        print(
            f"bot overhead per song (final event -> upload stored): p50 {overhead_p50:.2f} s, "
            f"p90 {percentile(r.overhead_s, 90):.2f} s, max {max(r.overhead_s):.2f} s, "
            f"mean {statistics.fmean(r.overhead_s):.2f} s (target p50 < 1.5 s: {verdict(overhead_p50 < 1.5)})"
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8, help="MAX_CONCURRENT_GENERATIONS")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of audio per song")
    parser.add_argument("--stream-seconds", type=float, default=3.0, help="how long one song takes to stream")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--log", type=Path, help="keep the bot's log (INFO) in this file")
    parser.add_argument("--profile", action="store_true", help="profile the loop thread from dispatch to last defer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run(args))
    report(args, results)
    return 0 if results.delivered == results.members else 1


if __name__ == "__main__":
    raise SystemExit(main())
