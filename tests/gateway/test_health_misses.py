"""A busy replica can miss a probe: one probe with no answer in time must not take a ready
upstream out (with every replica busy, that turned every request into a 503 for a whole
probe interval); ``health.failure_threshold`` misses in a row do. An answer that says
not ready, or a refused connection, still takes it out at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from gateway.client import UpstreamConnectError
from gateway.health import UpstreamProber
from gateway.metrics import GatewayMetrics
from gateway.settings import HealthSettings
from gateway.upstreams import UpstreamPool
from launcher.supervision.readiness import ReadinessCheck
from tests.vllm_standin import WholeAnswer

MODELS = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'


class Replica:
    """``mode``: healthy, silent (answers after the probe's timeout), unhealthy (/health
    503) or refused (nothing listens)."""

    def __init__(self) -> None:
        self.mode = "healthy"

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> WholeAnswer:
        if self.mode == "silent":
            await asyncio.sleep(1.0)
        if self.mode == "refused":
            raise UpstreamConnectError("refused")
        if url.endswith("/health"):
            return WholeAnswer(503 if self.mode == "unhealthy" else 200)
        return WholeAnswer(200, MODELS, "application/json")

    async def aclose(self) -> None:
        pass


def prober(replica: Replica, **health: object) -> tuple[UpstreamProber, UpstreamPool]:
    pool = UpstreamPool(["http://127.0.0.1:8001"])
    settings = HealthSettings(timeout=0.05, **health)  # type: ignore[arg-type]
    metrics = GatewayMetrics(CollectorRegistry())
    check = ReadinessCheck.of(None, [])
    return UpstreamProber(settings, pool, replica, metrics, check), pool


async def test_one_missed_probe_keeps_a_busy_replica_in_and_three_in_a_row_take_it_out() -> None:
    replica = Replica()
    probe, pool = prober(replica)
    (upstream,) = pool.upstreams
    await probe.probe(upstream)
    assert upstream.ready
    replica.mode = "silent"
    await probe.probe(upstream)
    await probe.probe(upstream)
    assert upstream.ready  # two misses: still serving as far as anyone knows
    replica.mode = "healthy"
    await probe.probe(upstream)  # an answer resets the count
    replica.mode = "silent"
    for _ in range(2):
        await probe.probe(upstream)
        assert upstream.ready
    await probe.probe(upstream)
    assert not upstream.ready  # the third miss in a row
    replica.mode = "healthy"
    await probe.probe(upstream)
    assert upstream.ready


async def test_an_unhealthy_answer_or_a_refused_connection_takes_it_out_at_once() -> None:
    for mode in ("unhealthy", "refused"):
        replica = Replica()
        probe, pool = prober(replica)
        (upstream,) = pool.upstreams
        await probe.probe(upstream)
        assert upstream.ready
        replica.mode = mode
        await probe.probe(upstream)
        assert not upstream.ready, mode


async def test_a_replica_never_seen_ready_is_not_ready_after_a_miss() -> None:
    replica = Replica()
    replica.mode = "silent"
    probe, pool = prober(replica, failure_threshold=1)
    (upstream,) = pool.upstreams
    await probe.probe(upstream)
    assert upstream.probed and not upstream.ready
