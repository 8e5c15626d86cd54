"""The Redis limiter against a real redis-server: shared limits, Redis's clock, expiring
slots, and Redis going away and coming back."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry, Counter

from gateway.errors import RateLimitExceeded, UpstreamUnavailable
from gateway.keyfile import ApiKey
from gateway.limits import RedisLimiter
from tests.gateway.redis_process import RedisProcess

pytestmark = pytest.mark.services

_names = itertools.count()


def key(**limits: Any) -> ApiKey:
    return ApiKey(name=f"r{next(_names)}", sha256="b" * 64, **limits)


class FakeClock:
    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Any:
    process = RedisProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def clients(server: RedisProcess) -> AsyncIterator[list[Any]]:
    made = [redis.asyncio.from_url(server.url) for _ in range(2)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


async def test_two_gateways_share_one_limit(clients: list[Any]) -> None:
    first, second = (RedisLimiter(client) for client in clients)  # Redis TIME
    k = key(rpm=4, tpm=1000)
    for limiter in (first, second, first, second):
        await limiter.acquire(k, 100)
    for limiter in (first, second):
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.acquire(k, 100)
        assert refused.value.reason == "requests"
        assert 14.0 < refused.value.retry_after <= 15.0  # one request per 15 s


async def test_tokens_reserved_on_one_gateway_are_seen_by_the_other(clients: list[Any]) -> None:
    first, second = (RedisLimiter(client) for client in clients)
    k = key(tpm=300)
    lease = await first.acquire(k, 200)
    with pytest.raises(RateLimitExceeded) as refused:
        await second.acquire(k, 200)
    assert refused.value.reason == "tokens"
    await lease.settle(10)
    assert (await second.acquire(k, 200)).headers["x-ratelimit-remaining-tokens"] in {"90", "91"}


async def test_crashed_gateway_slots_expire(clients: list[Any]) -> None:
    clock = FakeClock()
    crashed = RedisLimiter(clients[0], clock=clock, lease_ttl=30)
    survivor = RedisLimiter(clients[1], clock=clock, lease_ttl=30)
    k = key(concurrency=1)
    await crashed.acquire(k, 1)  # never settled: its gateway "crashed"
    with pytest.raises(RateLimitExceeded):
        await survivor.acquire(k, 1)
    clock.now += 31
    lease = await survivor.acquire(k, 1)
    await lease.settle(1)


async def test_redis_down_fail_open_then_recovers(
    server: RedisProcess, clients: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    errors = Counter("limiter_backend_errors", "", registry=registry)
    limiter = RedisLimiter(clients[0], on_backend_error="allow", backend_errors=errors)
    k = key(rpm=2)
    await limiter.acquire(k, 0)
    server.stop()
    with caplog.at_level(logging.INFO, logger="gateway.limits.redis_limiter"):
        for _ in range(5):  # over the limit, but Redis is gone: fail open
            lease = await limiter.acquire(k, 0)
            assert dict(lease.headers) == {}
        assert registry.get_sample_value("limiter_backend_errors_total") == 5
        assert not limiter.backend_healthy
        server.start()
        await limiter.acquire(k, 0)  # fresh Redis: full bucket, scripts loaded again
        await limiter.acquire(k, 0)
        with pytest.raises(RateLimitExceeded):
            await limiter.acquire(k, 0)
    assert limiter.backend_healthy
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


async def test_redis_down_deny_refuses_with_503(server: RedisProcess, clients: list[Any]) -> None:
    limiter = RedisLimiter(clients[0], on_backend_error="deny")
    k = key(rpm=100)
    lease = await limiter.acquire(k, 0)
    server.stop()
    with pytest.raises(UpstreamUnavailable):
        await limiter.acquire(k, 0)
    await lease.settle(0)  # settling while Redis is down must not raise
    server.start()
    await limiter.acquire(k, 0)
