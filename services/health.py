"""The optional operator port: ``/healthz`` for a load balancer or systemd's watchdog, ``/metrics`` for Prometheus.

Off unless ``SONGBOT_HEALTH_PORT`` is set. Every process kind serves it; each passes the checks that mean "healthy"
for it (a gateway: its shards are connected; every kind: the database answers). The event loop check is implicit:
a loop that cannot run this handler cannot answer at all, and the handler also reports the loop's latest lag.
A check that raises or takes longer than ``check_timeout_s`` counts as failed; the answer is 200 when all pass,
503 otherwise, with a JSON body naming each check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from services.metrics import Metrics

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]


class HealthServer:
    """An aiohttp server on ``host:port`` (port 0 picks a free one; see :attr:`port` after :meth:`start`)."""

    def __init__(
        self,
        metrics: Metrics,
        checks: Mapping[str, Check],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        check_timeout_s: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.checks = dict(checks)
        self.host = host
        self.port = port
        self.check_timeout_s = check_timeout_s
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _run_check(self, check: Check) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), self.check_timeout_s))
        except Exception:
            log.warning("health check failed", exc_info=True)
            return False

    async def _healthz(self, request: web.Request) -> web.Response:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_check(self.checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        healthy = all(results)
        body = {"ok": healthy, "checks": {"event_loop": True, **report}}
        return web.Response(status=200 if healthy else 503, text=json.dumps(body), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
