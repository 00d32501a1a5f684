"""Suite-wide rules: no test may block the event loop (blockbuster), warnings are errors, and each test has a
timeout (the last two in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

#: Shared fixtures and the loop watchdog (tests/support/): the watchdog fails a test on blocking calls and warnings
#: inside the bot's own tasks (which the bot would catch and turn into a polite failure), and on a loop stall; the
#: fixture modules provide ``clock``/``db_target``/``store`` and ``simulator``/``http_session``/``client``.
pytest_plugins = ["tests.support.watchdog", "tests.support.store_fixtures", "tests.support.sim_fixtures"]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test whose code makes a blocking call on a running event loop.

    Only calls made from songbot's own modules (and the tests' fakes) count; library internals that do a quick
    stat or read on the loop (importlib, pytest) are not ours to fix.
    """
    with blockbuster_ctx(scanned_modules=["services", "cogs", "bot", "tests"]) as bb:
        yield bb
