"""What the benchmarks measure about this process and machine: CPU time (its own and its finished children's), peak
resident memory over a block (sampled from a thread, so a busy event loop cannot hide a peak), and the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
import threading
from pathlib import Path

import psutil


def cpu_seconds() -> float:
    """CPU time used so far by this process and by its children that have exited (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> str:
    """One line for a benchmark's report: CPUs, RAM, Python and the system."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram:.1f} GiB RAM, Python {platform.python_version()}, {platform.system()}"
    )


class RssSampler:
    """Peak resident memory of this process over a ``with`` block (``peak``, and ``delta`` above what it was at
    the start); with ``children=True`` also the peak of its live children's memory added up (``peak_children``)."""

    def __init__(self, interval_s: float = 0.02, *, children: bool = False) -> None:
        self._proc = psutil.Process()
        self._interval_s = interval_s
        self._children = children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.baseline: int = self._proc.memory_info().rss
        self.peak: int = self.baseline
        self.peak_children = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if self._children:
            total = 0
            for child in self._proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.peak_children = max(self.peak_children, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def delta(self) -> int:
        return self.peak - self.baseline


def start_simulator(duration_s: float, api_key: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """The Fun-Music simulator in its own process (so its CPU is not the contestant's); returns it and its url."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.offline.simulator",
            "--duration",
            str(duration_s),
            "--api-key",
            api_key,
            *extra,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    base_url = proc.stdout.readline().decode().strip()
    if not base_url.startswith("http://"):
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, base_url
