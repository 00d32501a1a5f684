import asyncio
import time

import pytest
from blockbuster import BlockingError


async def test_blocking_sleep_is_caught() -> None:
    with pytest.raises(BlockingError):
        time.sleep(0.01)  # noqa: ASYNC251 - the point of the test
    await asyncio.sleep(0)
