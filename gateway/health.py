"""Background readiness probing of the upstreams.

An upstream is ready when ``GET /health`` answers 200 *and* ``GET /v1/models`` lists a
model (each of ``health.expected_models`` when set): vLLM's ``/health`` goes 200 as soon as
the HTTP server binds, before it can serve (REFERENCE section 1). Probes run every
``health.interval`` seconds in one task started by the app's lifespan; requests never wait
on them.
"""

from __future__ import annotations

import asyncio
import json
import logging

from gateway.client import UpstreamClient, UpstreamConnectError
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger("vkit.gateway.health")


class UpstreamProber:
    def __init__(
        self,
        settings: GatewaySettings,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: GatewayMetrics,
        headers: dict[str, str],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.headers = headers

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(u) for u in self.pool.upstreams))

    async def probe(self, upstream: Upstream) -> None:
        try:
            async with asyncio.timeout(self.settings.health.timeout):
                models = await self._models_if_healthy(upstream)
        except (TimeoutError, UpstreamConnectError):
            models = None
        expected = set(self.settings.health.expected_models)
        ready = models is not None and bool(models) and expected <= models
        if ready != upstream.ready or not upstream.probed:
            log.info("upstream %s is %s", upstream.label, "ready" if ready else "not ready")
        upstream.ready = ready
        upstream.probed = True
        upstream.models = frozenset(models or ())
        self.metrics.upstream_up.labels(upstream.label).set(1 if ready else 0)

    async def _models_if_healthy(self, upstream: Upstream) -> set[str] | None:
        health = await self.client.send("GET", upstream.url + "/health", self.headers, None)
        try:
            await health.read()
        finally:
            health.release()
        if health.status != 200:
            return None
        listing = await self.client.send("GET", upstream.url + "/v1/models", self.headers, None)
        try:
            body = await listing.read()
        finally:
            listing.release()
        if listing.status != 200:
            return None
        return model_ids(body)

    async def run_forever(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.health.interval)


def model_ids(body: bytes) -> set[str] | None:
    """The ids in a ``/v1/models`` answer, or ``None`` when it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        return None
    return {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
