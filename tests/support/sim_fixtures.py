"""Shared fixtures, loaded for every test by ``pytest_plugins`` in tests/conftest.py: ``simulator`` (a running
Fun-Music simulator), ``http_session``, and ``client`` (a FunMusicClient pointed at the simulator). Outside
fixtures: ``async with running_simulator(Scenario(...)) as sim: ...``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from services.funmusic.client import FunMusicClient
from services.offline.simulator import FunMusicSimulator, Scenario
from services.settings import Secret

SIM_KEY = "sk-sim-0123456789abcdef"  # a key that looks like a real one, so leak checks mean something


async def no_sleep(_seconds: float) -> None:
    """Backoff sleeps in tests: record nothing, wait for nothing (time is not what is tested)."""


@asynccontextmanager
async def running_simulator(
    scenario: Scenario | None = None, *, api_key: str = SIM_KEY
) -> AsyncIterator[FunMusicSimulator]:
    """A simulator listening on 127.0.0.1 (a free port) for the duration of the block."""
    sim = FunMusicSimulator(api_key=api_key, scenario=scenario)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()


def make_client(session: aiohttp.ClientSession, sim: FunMusicSimulator, **overrides: Any) -> FunMusicClient:
    """A client for ``sim`` with test-sized timeouts and (almost) no backoff; keyword arguments override."""
    options: dict[str, Any] = {
        "api_key": Secret(SIM_KEY),
        "base_url": sim.base_url,
        "max_retries": 2,
        "connect_timeout_s": 2.0,
        "idle_timeout_s": 5.0,
        "total_deadline_s": 60.0,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "sleep": no_sleep,
    }
    options.update(overrides)
    return FunMusicClient(session, **options)


@pytest.fixture
async def simulator() -> AsyncIterator[FunMusicSimulator]:
    async with running_simulator() as sim:
        yield sim


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(http_session: aiohttp.ClientSession, simulator: FunMusicSimulator) -> FunMusicClient:
    return make_client(http_session, simulator)
