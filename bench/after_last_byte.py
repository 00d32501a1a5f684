"""After-the-last-byte benchmark (not a test): from a song's final SSE event to its upload starting.

One 200 s, 48 kHz stereo WAV song (38.4 MB) is streamed by the Fun-Music simulator (its own process, so its work is
not counted) to the real job path: ``JobManager`` runs the job, ``FunMusicClient.generate`` streams it (with its
decode check and WAV repair), ``prepare_song`` fits it under the upload limit (a WAV over the limit becomes mp3,
walking the ladder) and draws its waveform at the same time, and the job reaches ``deliver``, where the upload
would start. The store and the ledger are no-ops here: their writes are not what is measured.

Timed: from the client parsing the event that carries ``finish_reason: "stop"`` to ``deliver`` being called.
Compared, in the same run and interleaved with it: one plain ffmpeg CLI encode of the same WAV file to the rung
the job landed on (``ffmpeg -i song.wav -c:a libmp3lame -b:a <rung>k out.mp3``), the floor the job has to beat.
Also printed: the peak RSS growth of this process over a job (psutil, every 20 ms) against the decoded audio.

    .venv/bin/python bench/after_last_byte.py [--duration 200] [--runs 7] [--max-bytes 10485760]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sampling import RssSampler, cpu_seconds, machine, start_simulator
from services.audio import Tags
from services.errors import SongbotError
from services.ffmpeg import ffmpeg_exe
from services.funmusic.client import FunMusicClient
from services.funmusic.request import GenerationRequest, Progress
from services.jobs import Delivery, DeliveryRoute, JobManager, JobSpec, PreparedSong
from services.settings import Secret

API_KEY = "sk-bench-0000"
PROMPT = "an epic orchestral anthem with choir and drums for a long journey"
LYRICS = "[verse]\n" + "we ride the long road home tonight\n" * 40


class TimedClient(FunMusicClient):
    """The real client, noting when it parsed the stream's final event (``time.perf_counter``, CPU time)."""

    final_event_at = 0.0
    final_event_cpu = 0.0

    async def _events(self, *args: Any, **kwargs: Any) -> Any:
        final = await super()._events(*args, **kwargs)
        if final is not None:
            self.final_event_at = time.perf_counter()
            self.final_event_cpu = cpu_seconds()
        return final


class NoStore:
    async def transition(self, job_id: int, status: str, **fields: Any) -> None:
        return None

    async def settle(self, job_id: int, actual_seconds: float, billed_seconds: float | None = None) -> None:
        return None

    async def refund(self, job_id: int, billed_seconds: float = 0) -> None:
        return None


class Observer:
    """Records when ``deliver`` is called (the upload would start) and what it was given."""

    def __init__(self) -> None:
        self.deliver_at = 0.0
        self.deliver_cpu = 0.0
        self.song: PreparedSong | None = None
        self.error: SongbotError | None = None

    async def queued(self, position: int) -> None:
        return None

    async def stage(self, stage: str, progress: Progress | None) -> None:
        return None

    async def deliver(self, song: PreparedSong) -> Delivery:
        self.deliver_at = time.perf_counter()
        self.deliver_cpu = cpu_seconds()
        self.song = song
        return Delivery(channel_id=None, message_id=None, how=DeliveryRoute.ORIGINAL)

    async def failed(self, error: SongbotError) -> None:
        self.error = error

    async def cancelled(self, by_user_id: int | None) -> None:
        return None


@dataclass
class JobRun:
    seconds: float
    cpu_seconds: float
    kbps: int | None
    size: int
    rss_growth: int


async def one_job(client: TimedClient, work_dir: Path, job_id: int, max_bytes: int) -> JobRun:
    manager = JobManager(
        generator=client, store=NoStore(), ledger=NoStore(), work_dir=work_dir, max_concurrent=1, queue_size=1
    )
    spec = JobSpec(
        job_id=job_id,
        guild_id=1,
        user_id=1,
        request=GenerationRequest(prompt=PROMPT, format="wav"),
        want_format="wav",
        max_bytes=max_bytes,
        tags=Tags(title="The Long Road Home", artist="songbot", lyrics=LYRICS),
        guild_limit=1,
    )
    observer = Observer()
    with RssSampler() as rss:
        await manager.submit(spec, observer)
    if observer.song is None or observer.song.audio is None:
        raise SystemExit(f"the job did not deliver a fitted song: {observer.error!r}")
    audio = observer.song.audio
    return JobRun(
        observer.deliver_at - client.final_event_at,
        observer.deliver_cpu - client.final_event_cpu,
        audio.bitrate_kbps,
        audio.size,
        rss.delta,
    )


async def cli_encode(src: Path, dst: Path, kbps: int) -> tuple[float, float]:
    """Wall and CPU seconds of one plain ffmpeg encode."""
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    argv += ["-c:a", "libmp3lame", "-b:a", f"{kbps}k", str(dst)]
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = await asyncio.create_subprocess_exec(*argv)
    if await proc.wait() != 0:
        raise SystemExit("the ffmpeg CLI encode failed")
    return time.perf_counter() - start, cpu_seconds() - cpu


async def main(duration_s: float, runs: int, max_bytes: int) -> None:
    print(f"machine: {machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    await asyncio.to_thread(ffmpeg_exe)
    proc, base_url = start_simulator(duration_s, API_KEY)
    try:
        with tempfile.TemporaryDirectory(prefix="songbot-bench-") as tmp:
            root = Path(tmp)
            async with aiohttp.ClientSession() as session:
                client = TimedClient(session, api_key=Secret(API_KEY), base_url=base_url, max_retries=0)
                # the simulator renders the song once; this copy is the CLI's input
                kept = await client.generate(GenerationRequest(prompt=PROMPT, format="wav"), out_dir=root)
                decoded = kept.audio_bytes
                print(
                    f"song: {kept.duration_s:.1f} s of {kept.sample_rate} Hz, {kept.channels} channels, "
                    f"{decoded / 1e6:.1f} MB of PCM; upload limit {max_bytes} bytes"
                )
                jobs: list[JobRun] = []
                clis: list[tuple[float, float]] = []
                for n in range(runs):  # interleaved, so a noisy neighbour hurts both alike
                    run = await one_job(client, root / "work", n + 1, max_bytes)
                    if run.kbps is None:
                        raise SystemExit("the song was not transcoded: raise --duration or lower --max-bytes")
                    jobs.append(run)
                    clis.append(await cli_encode(kept.audio_path, root / "cli.mp3", run.kbps))
    finally:
        proc.terminate()
        proc.wait()

    job_s = [r.seconds for r in jobs]
    cli_s = [wall for wall, _ in clis]
    ratios = [j / c for j, c in zip(job_s, cli_s, strict=True)]
    rungs = sorted({r.kbps for r in jobs if r.kbps is not None})
    print(f"rung: {', '.join(f'{k} kbps' for k in rungs)}; file {jobs[-1].size} bytes")
    print(f"{'':26} {'median':>8} {'best':>8}   runs (s)")
    print(
        f"{'after the last byte':26} {statistics.median(job_s):7.3f}s {min(job_s):7.3f}s   "
        + " ".join(f"{t:.3f}" for t in job_s)
    )
    print(
        f"{'ffmpeg CLI, same rung':26} {statistics.median(cli_s):7.3f}s {min(cli_s):7.3f}s   "
        + " ".join(f"{t:.3f}" for t in cli_s)
    )
    print(
        f"ratio (job / CLI): {statistics.median(job_s) / statistics.median(cli_s):.3f} of the medians, "
        f"{statistics.median(ratios):.3f} median of pairs, {min(job_s) / min(cli_s):.3f} of the bests; target <= 1.1"
    )
    job_cpu, cli_cpu = statistics.median(r.cpu_seconds for r in jobs), statistics.median(c for _, c in clis)
    print(
        f"CPU (this process and its ffmpeg children), median: job {job_cpu:.3f} s, CLI {cli_cpu:.3f} s "
        f"({job_cpu / cli_cpu:.3f}x; the job's includes the waveform and the decode check's exit)"
    )
    growth = max(r.rss_growth for r in jobs)
    print(f"peak RSS growth over a job: {growth / 1e6:.1f} MB = {growth / decoded:.2f}x the decoded audio; target <= 2")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    ns = parser.parse_args()
    asyncio.run(main(ns.duration, ns.runs, ns.max_bytes))
