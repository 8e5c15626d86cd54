"""Scraping each replica's ``/metrics`` in the background for the aware router.

Every ``router.scrape_interval`` seconds, one task (started by the app's lifespan) asks
each upstream for ``/metrics`` through the prober's client (requests can never starve it)
and keeps the three gauges of :func:`gateway.routing.load.parse_vllm_gauges` with the
moment and this gateway's in-flight count, in :attr:`LoadScraper.scrapes` (label ->
:class:`~gateway.routing.load.Scrape`), which the router reads. A scrape that fails or is
not a vLLM page leaves the last one to go stale (the in-flight counts then decide) and is
counted in ``vkit_gateway_replica_scrape_failures_total{upstream}``; a refused connection
also takes the replica out at once (the prober alone puts it back). Each round sets
``vkit_gateway_replica_score{upstream}`` to what the router sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.client import UpstreamClient, UpstreamClientError, UpstreamConnectError
from gateway.metrics import GatewayMetrics
from gateway.routing.load import Scrape, parse_vllm_gauges, view
from gateway.settings import RouterSettings
from gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger("vkit.gateway.routing")

METRICS_PATH = "/metrics"


class LoadScraper:
    def __init__(
        self,
        settings: RouterSettings,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.headers = headers or {}
        self.scrapes: dict[str, Scrape] = {}

    async def run_forever(self) -> None:
        while True:
            await self.scrape_all()
            await asyncio.sleep(self.settings.scrape_interval)

    async def scrape_all(self) -> None:
        upstreams = list(self.pool.upstreams)
        await asyncio.gather(*(self.scrape(u) for u in upstreams))
        for gone in set(self.scrapes) - {u.label for u in upstreams}:
            del self.scrapes[gone]
        now, stale = self.clock(), self.settings.stale_after
        for upstream in upstreams:
            if upstream.removed:  # dropped by discovery during the scrape
                continue
            score = view(self.scrapes.get(upstream.label), upstream.in_flight, now, stale).score
            self.metrics.replica_score.labels(upstream.label).set(score)

    async def scrape(self, upstream: Upstream) -> None:
        """One scrape of ``upstream``; never raises (but for cancellation).

        The in-flight baseline is read when the response head arrives, not when the scrape
        is sent: vLLM renders the whole page before its head, so what this gateway sent or
        finished while the scrape travelled is already in the page (reading it before would
        count a burst twice and spill affinity for nothing). What was sent in the last
        moments before the head may not be in the page yet; the view's floor at the
        in-flight count covers it."""
        try:
            async with asyncio.timeout(min(self.settings.scrape_interval * 2, 5.0)):
                response = await self.client.send(
                    "GET", upstream.url + METRICS_PATH, self.headers, None
                )
                in_flight = upstream.in_flight
                try:
                    status, body = response.status, await response.read()
                finally:
                    response.release()
        except UpstreamConnectError:
            self._failed(upstream)
            if upstream.ready:
                log.warning(
                    "replica %s refused the scrape: out until a probe finds it ready",
                    upstream.label,
                )
            self.pool.mark_down(upstream)
            return
        except (TimeoutError, UpstreamClientError):
            self._failed(upstream)
            return
        gauges = parse_vllm_gauges(body.decode(errors="replace")) if status == 200 else None
        if gauges is None:
            self._failed(upstream)
            return
        self.scrapes[upstream.label] = Scrape(
            running=gauges["vllm:num_requests_running"],
            waiting=gauges["vllm:num_requests_waiting"],
            kv_usage=gauges["vllm:kv_cache_usage_perc"],
            at=self.clock(),
            in_flight_at=in_flight,
        )

    def _failed(self, upstream: Upstream) -> None:
        if not upstream.removed:
            self.metrics.replica_scrape_failures.labels(upstream.label).inc()
