"""Background readiness probing of the upstreams.

Whether an upstream is ready is decided by the one rule of
:mod:`launcher.supervision.readiness` (``/health`` 200 and ``/v1/models`` listing a model --
each of ``health.expected_models`` when set -- asked with the upstream API key), the same
rule ``vkit launch`` and ``vkit up`` use; this module only sends the two requests through the
gateway's own pooled client. Probes run every ``health.interval`` seconds in one task
started by the app's lifespan; requests never wait on them.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.client import UpstreamClient, UpstreamConnectError
from gateway.metrics import GatewayMetrics
from gateway.settings import HealthSettings
from gateway.upstreams import Upstream, UpstreamPool
from launcher.supervision.readiness import HEALTH_PATH, MODELS_PATH, ReadinessCheck, Verdict

log = logging.getLogger("vkit.gateway.health")


class UpstreamProber:
    def __init__(
        self,
        settings: HealthSettings,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: GatewayMetrics,
        check: ReadinessCheck,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.check = check

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(u) for u in self.pool.upstreams))

    async def probe(self, upstream: Upstream) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                verdict = await self._verdict(upstream)
        except (TimeoutError, UpstreamConnectError):
            verdict = self.check.verdict(None, None, None)
        ready = verdict.ready
        if ready != upstream.ready or not upstream.probed:
            state = "ready" if ready else "not ready"
            log.info("upstream %s is %s: %s", upstream.label, state, verdict.reason)
        upstream.ready = ready
        upstream.probed = True
        upstream.models = verdict.models
        self.metrics.upstream_up.labels(upstream.label).set(1 if ready else 0)

    async def _get(self, upstream: Upstream, path: str) -> tuple[int, bytes]:
        response = await self.client.send("GET", upstream.url + path, self.check.headers, None)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def _verdict(self, upstream: Upstream) -> Verdict:
        health_status, _ = await self._get(upstream, HEALTH_PATH)
        if health_status != 200:
            return self.check.verdict(health_status, None, None)
        models_status, body = await self._get(upstream, MODELS_PATH)
        return self.check.verdict(health_status, models_status, body)

    async def run_forever(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.interval)
