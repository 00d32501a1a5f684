"""Streaming benchmark (not a test): 200 s of 48 kHz stereo WAV (~38 MB) streamed as SSE and assembled.

Contestants, each on the same stream from the same simulator (a separate process, so its work is not counted):

- songbot's ``FunMusicClient.generate`` (SSE parser on ``iter_any``, per-event base64 decode with pybase64,
  writes in a thread, WAV repair, and the decode check with ffmpeg that every real song gets, fed through a pipe
  while the song streams);
- the official ``dashscope`` SDK (``BaseAioApi.call(..., stream=True)``), decoding each event's base64 and writing it
  to a file. Its async line reader needs a session with a big ``read_bufsize`` (``docs/dashscope.md`` section 6).

Prints wall time, MB/s of audio, CPU time (this process and its children, i.e. ffmpeg) in all and per MB of
audio, and peak memory: tracemalloc's peak (Python allocations, in a separate run, since tracing slows everything)
and the peak RSS growth sampled every 5 ms during the timed runs; and the load average, since the machine is shared.

    .venv/bin/python bench/stream.py [--duration 200] [--runs 7] [--fallback] [--profile]

``--fallback`` makes songbot decode base64 with the standard library (what it does where pybase64's wheel is
missing); ``--profile`` adds songbot's runs under cProfile: the event loop's thread, by function.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sampling import RssSampler, cpu_seconds, machine, start_simulator
from services.ffmpeg import probe_audio
from services.funmusic import b64
from services.funmusic.client import FunMusicClient
from services.funmusic.request import GenerationRequest
from services.settings import Secret
from services.wav import repair_wav_file

API_KEY = "sk-bench-0000"
PROMPT = "an epic orchestral anthem with choir and drums for a long journey"


@dataclass
class Run:
    seconds: float
    audio_bytes: int
    rss_peak_delta: int
    cpu_seconds: float


async def songbot(base_url: str, out_dir: Path) -> int:
    async with aiohttp.ClientSession() as session:
        client = FunMusicClient(session, api_key=Secret(API_KEY), base_url=base_url, max_retries=0)
        result = await client.generate(GenerationRequest(prompt=PROMPT, format="wav"), out_dir=out_dir)
    size = result.audio_bytes
    await asyncio.to_thread(result.audio_path.unlink)
    return size


async def sdk(base_url: str, out_dir: Path, read_bufsize: int | None = 4 * 1024 * 1024, *, check: bool = False) -> int:
    """The SDK's async stream, decoded and written the plain way. ``read_bufsize=None``: the SDK's own session."""
    from dashscope.client.base_api import BaseAioApi

    path = out_dir / "sdk.wav"
    written = 0
    finished = False
    # The SDK reads lines with aiohttp's readline: lines up to 2x read_bufsize, so make room for big events.
    async with contextlib.AsyncExitStack() as stack:
        session = None
        if read_bufsize is not None:
            session = await stack.enter_async_context(aiohttp.ClientSession(read_bufsize=read_bufsize))
        responses = await BaseAioApi.call(
            model="fun-music-v1",
            input={"prompt": PROMPT, "format": "wav"},
            task_group="audio",
            task="music",
            function="generation",
            api_key=API_KEY,
            stream=True,
            base_address=base_url,
            session=session,
        )
        with path.open("wb") as fh:
            # dashscope's stubs type call() as one response; with stream=True it is an async generator of them
            async for rsp in responses:  # type: ignore[attr-defined]
                if rsp.status_code != 200:
                    raise RuntimeError(f"SDK error {rsp.code}: {rsp.message}")
                output = rsp.output or {}
                data = output.get("audio", {}).get("data")
                if data:
                    chunk = base64.b64decode(data, validate=True)
                    fh.write(chunk)
                    written += len(chunk)
                finished = finished or output.get("finish_reason") == "stop"
    if check:  # the same job songbot does after the stream: fix the WAV sizes and decode the file once
        await asyncio.to_thread(repair_wav_file, path)
        await probe_audio(path)
    path.unlink(missing_ok=True)
    if not finished:
        raise RuntimeError("SDK stream ended without stop")
    return written


async def sdk_checked(base_url: str, out_dir: Path) -> int:
    return await sdk(base_url, out_dir, check=True)


async def timed(fn: Callable[[str, Path], Awaitable[int]], base_url: str, out_dir: Path) -> Run:
    with RssSampler(interval_s=0.005) as rss:
        cpu = cpu_seconds()
        start = time.perf_counter()
        size = await fn(base_url, out_dir)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    return Run(seconds, size, rss.delta, cpu)


async def traced_peak(fn: Callable[[str, Path], Awaitable[int]], base_url: str, out_dir: Path) -> int:
    tracemalloc.start()
    try:
        await fn(base_url, out_dir)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


async def sdk_default_session_on_a_huge_line(duration_s: float, out_dir: Path) -> str:
    """What the SDK does, out of the box, with one data line over 600 KB (``docs/dashscope.md`` §6.1)."""
    import dashscope

    proc, base_url = start_simulator(duration_s, API_KEY, "--huge-line")
    try:
        await sdk(base_url, out_dir, read_bufsize=None)
        outcome = "ok"
    except Exception as exc:
        outcome = f"fails: {type(exc).__name__}: {str(exc)[:80]}"
    finally:
        # dashscope's stubs declare this `def ... -> None`; it is a coroutine function (async def) at runtime
        await dashscope.close_shared_aio_session()  # type: ignore[func-returns-value,misc]
        proc.terminate()
        proc.wait()
    try:
        proc2, base_url2 = start_simulator(duration_s, API_KEY, "--huge-line")
        try:
            await songbot(base_url2, out_dir)
            ours = "ok"
        finally:
            proc2.terminate()
            proc2.wait()
    except Exception as exc:
        ours = f"fails: {type(exc).__name__}: {exc}"
    return f"SDK (its own session): {outcome}; songbot: {ours}"


async def profile_songbot(base_url: str, out_dir: Path, runs: int) -> None:
    """cProfile of songbot's runs: what the event loop's thread spends its time on (cProfile sees one thread)."""
    profiler = cProfile.Profile()
    for _ in range(runs):
        profiler.enable()
        await songbot(base_url, out_dir)
        profiler.disable()
    print(f"songbot under cProfile, {runs} runs, the loop thread by own time (cProfile slows Python code):")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(18)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


async def main(duration_s: float, runs: int, *, fallback: bool = False, profile: bool = False) -> None:
    print(f"machine: {machine()}")
    if fallback:
        b64.decode = b64.decode_fallback
    print(f"songbot's base64 decoder: {'pybase64' if b64.decode is b64.decode_fast else 'binascii (fallback)'}")
    print(f"before: {load()}")
    proc, base_url = start_simulator(duration_s, API_KEY)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp)
            warm = await songbot(base_url, out_dir)  # the simulator renders and caches the song once
            print(
                f"stream: {duration_s:g} s of 48 kHz stereo WAV = {mb(warm)} of audio, "
                f"{mb(warm * 4 / 3)} of base64 in 32 KiB events"
            )
            await sdk(base_url, out_dir)
            contestants = {"songbot": songbot, "sdk": sdk, "sdk+check": sdk_checked}
            results: dict[str, list[Run]] = {name: [] for name in contestants}
            for _ in range(runs):  # interleaved, so a noisy neighbour hurts all alike
                for name, fn in contestants.items():
                    results[name].append(await timed(fn, base_url, out_dir))
            peaks = {
                "songbot": await traced_peak(songbot, base_url, out_dir),
                "sdk": await traced_peak(sdk, base_url, out_dir),
            }
            # what the decode check costs when it runs on the finished file, after the stream (as in sdk+check)
            async with aiohttp.ClientSession() as session:
                client = FunMusicClient(session, api_key=Secret(API_KEY), base_url=base_url, max_retries=0)
                kept = await client.generate(GenerationRequest(prompt=PROMPT, format="wav"), out_dir=out_dir)
            probes = []
            for _ in range(runs):
                start = time.perf_counter()
                await probe_audio(kept.audio_path)
                probes.append(time.perf_counter() - start)
            probe_s = statistics.median(probes)
            huge = await sdk_default_session_on_a_huge_line(min(duration_s, 10.0), out_dir)
            if profile:
                await profile_songbot(base_url, out_dir, runs)
    finally:
        proc.terminate()
        proc.wait()

    print(f"after: {load()}")
    size = results["songbot"][0].audio_bytes
    header = (
        f"{'':8} {'wall best':>10} {'median':>8} {'MB/s best':>10} {'CPU median':>11} {'CPU/MB':>7} "
        f"{'tracemalloc peak':>17} {'RSS growth':>11}"
    )
    print(f"{header}   runs (s)")
    best, median = {}, {}
    for name, rs in results.items():
        times = [r.seconds for r in rs]
        best[name], median[name] = min(times), statistics.median(times)
        rss = max(r.rss_peak_delta for r in rs)
        cpu = statistics.median(r.cpu_seconds for r in rs)
        peak = mb(peaks[name]) if name in peaks else "-"
        print(
            f"{name:9} {best[name]:8.3f}s {median[name]:7.3f}s {size / 1e6 / best[name]:10.1f} {cpu:10.3f}s "
            f"{cpu * 1e3 / (size / 1e6):5.1f}ms {peak:>17} {mb(rss):>11}   " + " ".join(f"{t:.3f}" for t in times)
        )
    print(
        f"the decode check of the finished file, run after the stream (sdk+check does that): {probe_s:.3f} s "
        "(median); songbot's runs while the song streams"
    )
    print(
        f"songbot's time / the SDK's: {median['songbot'] / median['sdk']:.2f}x median, "
        f"{best['songbot'] / best['sdk']:.2f}x best; / sdk+check's: {median['songbot'] / median['sdk+check']:.2f}x "
        "median"
    )
    print(
        f"ratio (SDK time / songbot time): {best['sdk'] / best['songbot']:.2f} best, "
        f"{median['sdk'] / median['songbot']:.2f} median; "
        f"same job (SDK + the same WAV repair and decode check): {best['sdk+check'] / best['songbot']:.2f} best, "
        f"{median['sdk+check'] / median['songbot']:.2f} median"
    )
    rss_ratio = max(r.rss_peak_delta for r in results["songbot"]) / size
    print(f"peak memory / audio size, songbot: {peaks['songbot'] / size:.3f}x tracemalloc, {rss_ratio:.3f}x RSS growth")
    print(f"a 620 KB data line: {huge}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--fallback", action="store_true", help="songbot decodes base64 with binascii")
    parser.add_argument("--profile", action="store_true", help="also profile songbot's runs (cProfile)")
    ns = parser.parse_args()
    asyncio.run(main(ns.duration, ns.runs, fallback=ns.fallback, profile=ns.profile))
