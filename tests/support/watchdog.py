"""Fail the test when the bot blocks its event loop, even where the bot's own error handling would hide it.

Why: blockbuster (``tests/conftest.py``) raises ``BlockingError`` at a blocking call made on the loop. When that
call runs in one of the bot's own tasks (a job, an observer, a discord.py event or command handler), the bot
catches it like any other bug: the member reads "something went wrong", the error is logged, and a test that
waits for *an* answer passes. A warning turned into an exception by ``filterwarnings = error`` is swallowed the
same way. And blockbuster only knows the calls it patches, in the modules it scans (``bot.py`` is not one), so
CPU-heavy work on the loop goes unseen. This plugin adds, for every test:

- a record of each ``BlockingError`` raised outside the test's own call stack (so ``pytest.raises`` in the test
  still works), reported with the stack of the blocking call;
- a record of each log record whose exception is a ``Warning`` (caught by the bot's error handling);
- for ``async`` tests, a loop watchdog: a thread that pings the running loop every 20 ms and, when the loop has
  not answered within ``SONGBOT_LOOP_STALL_S`` seconds (default 0.5; no test of the suite comes near 0.1), records
  what the loop thread was executing at that moment. A safety net, not a timing assertion.

Any record fails the test at teardown. Enabled for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``
(or ``pytest -p tests.support.watchdog``); a test that must block on purpose can say
``@pytest.mark.allow_loop_stalls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType

import blockbuster.blockbuster as _bb
import pytest

PING_INTERVAL_S = 0.02


def stall_threshold() -> float:
    return float(os.environ.get("SONGBOT_LOOP_STALL_S", "") or 0.5)


@dataclass
class Findings:
    """What went wrong during one test, in words and stacks."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)


_current: Findings | None = None
_test_code: CodeType | None = None


def _on_stack(code: CodeType, frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _in_logging(frame: FrameType | None) -> bool:
    """A handler writing a log line (pytest's own file handler writes to os.devnull on the loop): not the bot's
    blocking call, and logging swallows the error anyway."""
    while frame is not None:
        if frame.f_code.co_filename == logging.__file__:
            return True
        frame = frame.f_back
    return False


class _RecordedBlockingError(_bb.BlockingError):
    """blockbuster's error, noting where it was raised when that was not in the test's own call stack."""

    def __init__(self, func: str) -> None:
        super().__init__(func)
        frame = sys._getframe(1)
        if _current is None or _in_logging(frame):
            return
        if _test_code is None or not _on_stack(_test_code, frame):
            stack = "".join(traceback.format_stack(frame, limit=25))
            _current.add(f"blocking call to {func} in a task the test does not await:\n{stack}")


class _SwallowedErrors(logging.Handler):
    """Log records carrying a BlockingError or a Warning: how the bot reports the errors it catches."""

    def __init__(self, findings: Findings) -> None:
        super().__init__(level=logging.WARNING)
        self._findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        if self._findings is not _current:
            return  # an inner guard (see guarding) is recording now
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _bb.BlockingError):
            return  # already recorded with its stack when it was raised
        if isinstance(error, Warning):
            where = "".join(traceback.format_tb(error.__traceback__)[-4:])
            self._findings.add(f"{type(error).__name__} caught and logged by {record.name}: {error}\n{where}")


class LoopWatchdog:
    """Pings a running event loop from a thread; records a stall with the loop thread's stack at the time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, findings: Findings, threshold_s: float) -> None:
        self._loop = loop
        self._findings = findings
        self._threshold_s = threshold_s
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)
        self.worst_s = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(PING_INTERVAL_S):
            if not self._loop.is_running() or self._loop.is_closed():
                continue
            answered = threading.Event()
            sent = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # closed in the meantime
                continue
            if answered.wait(self._threshold_s):
                self.worst_s = max(self.worst_s, time.monotonic() - sent)
                continue
            if not self._loop.is_running():
                continue  # the loop stopped between two phases of the test: idle, not stalled
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=25)) if frame is not None else "(no frame)\n"
            while not answered.wait(0.05) and not self._stop.is_set():
                pass
            lag = time.monotonic() - sent
            self.worst_s = max(self.worst_s, lag)
            self._findings.add(f"the event loop did not answer for {lag:.2f} s; it was executing:\n{stack}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_loop_stalls: the loop watchdog does not fail this test")


@contextlib.contextmanager
def guarding(findings: Findings, test_code: CodeType | None = None) -> Iterator[Findings]:
    """Record blocking calls raised outside ``test_code``'s call stack, and warnings the bot caught and logged,
    into ``findings`` for the duration (what ``loop_guard`` does around each test). Nests."""
    global _current, _test_code
    saved = _current, _test_code, _bb.BlockingError
    _current, _test_code = findings, test_code
    _bb.BlockingError = _RecordedBlockingError  # type: ignore[misc]
    handler = _SwallowedErrors(findings)
    logging.getLogger().addHandler(handler)
    try:
        yield findings
    finally:
        logging.getLogger().removeHandler(handler)
        _current, _test_code, _bb.BlockingError = saved  # type: ignore[misc]


@contextlib.asynccontextmanager
async def watching_loop(findings: Findings, threshold_s: float | None = None) -> AsyncIterator[LoopWatchdog]:
    """Watch the running loop for stalls longer than ``threshold_s`` (default: ``stall_threshold()``)."""
    watchdog = LoopWatchdog(asyncio.get_running_loop(), findings, threshold_s or stall_threshold())
    watchdog.start()
    try:
        yield watchdog
    finally:
        await asyncio.to_thread(watchdog.stop)


@pytest.fixture(autouse=True)
def loop_guard(request: pytest.FixtureRequest) -> Iterator[Findings]:
    """The swallowed-error checks for every test, and the loop watchdog for async ones (see the module doc)."""
    function = getattr(request, "function", None)
    with guarding(Findings(), getattr(function, "__code__", None)) as findings:
        if function is not None and inspect.iscoroutinefunction(function):
            request.getfixturevalue("_loop_watchdog")
        yield findings
    if findings.items and not request.node.get_closest_marker("allow_loop_stalls"):
        pytest.fail("\n\n".join(findings.items), pytrace=False)


@pytest.fixture
async def _loop_watchdog() -> AsyncIterator[LoopWatchdog]:
    """Requested by ``loop_guard`` for async tests, so that it runs in the test's own loop."""
    assert _current is not None, "requested by loop_guard only"
    async with watching_loop(_current) as watchdog:
        yield watchdog
