"""A client-side sliding-window rate limiter: at most ``rate`` requests in any ``per_s`` seconds.

fun-music-v1 allows 180 requests per minute (``docs/dashscope.md`` section 5). Every POST (first tries and retries
alike) takes a slot, so a burst of retries cannot push the process over the model's limit. Waiters are served in
arrival order. Clock and sleep are injected so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class RateLimiter:
    def __init__(
        self,
        rate: int = 180,
        per_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1")
        if per_s <= 0:
            raise ValueError("per_s must be positive")
        self.rate = rate
        self.per_s = per_s
        self._clock = clock
        self._sleep = sleep
        self._stamps: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _expire(self, now: float) -> None:
        horizon = now - self.per_s
        while self._stamps and self._stamps[0] <= horizon:
            self._stamps.popleft()

    def wait_time(self) -> float:
        """Seconds until a slot is free (0 if one is free now)."""
        now = self._clock()
        self._expire(now)
        if len(self._stamps) < self.rate:
            return 0.0
        return max(0.0, self._stamps[0] + self.per_s - now)

    async def acquire(self) -> None:
        """Wait until a request may be sent, and count it."""
        async with self._lock:  # first come, first served
            while True:
                delay = self.wait_time()
                if delay <= 0:
                    self._stamps.append(self._clock())
                    return
                await self._sleep(delay)
