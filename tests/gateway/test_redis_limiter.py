"""The Redis limiter against a real redis-server: shared limits, Redis's clock, expiring
slots, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.errors import RateLimitExceeded, UpstreamUnavailable
from gateway.keyfile import ApiKey
from gateway.limits import RedisLimiter
from gateway.limits.redis_limiter import RedisLease
from tests.gateway.redis_process import RedisProcess, redis_clients, running_redis

pytestmark = pytest.mark.integration

_names = itertools.count()


def key(**limits: Any) -> ApiKey:
    return ApiKey(name=f"r{next(_names)}", sha256="b" * 64, **limits)


class FakeClock:
    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as process:
        yield process


@pytest.fixture
async def clients(server: RedisProcess) -> AsyncIterator[list[Any]]:
    async with redis_clients(server, 2) as made:
        yield made


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


class HangingCalls:
    """The Redis client, but the ``hang``-numbered script calls (1-based, counted over every
    script) never answer: the script runs in Redis first when ``ran``, and otherwise only once
    ``late`` is set (a command that reached Redis after the gateway gave up on it)."""

    def __init__(self, client: Any, hang: set[int], ran: bool = True) -> None:
        self._client = client
        self._hang = hang
        self._ran = ran
        self.calls = 0
        self.late = asyncio.Event()
        self.late_done = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, source: str) -> Any:
        script = self._client.register_script(source)

        async def call(**kwargs: Any) -> Any:
            self.calls += 1
            if self.calls not in self._hang:
                return await script(**kwargs)
            if self._ran:
                await script(**kwargs)
            else:
                task = asyncio.create_task(self._run_late(script, kwargs))
                self._tasks.add(task)
            await asyncio.Event().wait()  # the reply never comes: the limiter times out

        return call

    async def _run_late(self, script: Any, kwargs: dict[str, Any]) -> None:
        await self.late.wait()
        await script(**kwargs)
        self.late_done.set()


async def leases_of(client: Any, k: ApiKey) -> int:
    return int(await client.zcard(f"vkit:rl:{{{k.name}}}:leases"))


async def test_a_timed_out_acquire_is_undone(clients: list[Any]) -> None:
    slow = HangingCalls(clients[0], hang={1})  # the script ran; its reply was lost
    limiter = RedisLimiter(slow, on_backend_error="allow", timeout=0.2)
    k = key(concurrency=1, rpm=10)
    lease = await limiter.acquire(k, 0)
    assert dict(lease.headers) == {}  # timed out on our side: served without limits
    await limiter.drain()  # the undo is done (or given up)
    assert await leases_of(clients[1], k) == 0
    other = await RedisLimiter(clients[1]).acquire(k, 0)  # the slot is free
    assert other.headers["x-ratelimit-remaining-requests"] == "9"  # the request came back too


async def test_an_acquire_reaching_redis_after_its_undo_takes_nothing(clients: list[Any]) -> None:
    slow = HangingCalls(clients[0], hang={1}, ran=False)
    limiter = RedisLimiter(slow, on_backend_error="allow", timeout=0.2)
    k = key(concurrency=1, rpm=10)
    await limiter.acquire(k, 0)
    await limiter.drain()  # the undo ran before the acquire itself reached Redis
    slow.late.set()
    async with asyncio.timeout(5):
        await slow.late_done.wait()
    assert await leases_of(clients[1], k) == 0
    other = await RedisLimiter(clients[1]).acquire(k, 0)
    assert other.headers["x-ratelimit-remaining-requests"] == "9"


async def test_release_is_idempotent_by_request_id(clients: list[Any]) -> None:
    limiter = RedisLimiter(clients[0], clock=FakeClock())
    k = key(tpm=100)
    first = await limiter.acquire(k, 30)
    await limiter.acquire(k, 30)  # 40 tokens left
    assert isinstance(first, RedisLease)
    for _ in range(2):  # e.g. a retried release whose first reply was lost
        await limiter.release(k, 30, 0, first.lease_id)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(k, 80)  # 70 left: refunded once, not twice
    assert (await limiter.acquire(k, 70)).headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize("ran", [True, False], ids=["reply-lost", "never-ran"])
async def test_a_timed_out_release_is_retried_once_in_effect(clients: list[Any], ran: bool) -> None:
    slow = HangingCalls(clients[0], hang={2}, ran=ran)  # call 2: the settle
    limiter = RedisLimiter(slow, clock=FakeClock(), timeout=0.2)
    k = key(tpm=100, concurrency=1)
    lease = await limiter.acquire(k, 60)
    await lease.settle(10)
    await limiter.drain()
    assert await leases_of(clients[1], k) == 0
    other = await RedisLimiter(clients[1], clock=FakeClock()).acquire(k, 0)
    assert other.headers["x-ratelimit-remaining-tokens"] == "90"  # 50 refunded, once


async def test_a_redis_restart_is_logged_once_and_lost_leases_are_counted(
    server: RedisProcess, clients: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    resets = Counter("resets", "", registry=registry)
    lost = Counter("lost", "", registry=registry)
    limiter = RedisLimiter(clients[0], resets=resets, leases_lost=lost, check_interval=0.0)
    k = key(concurrency=5, rpm=100)
    in_flight = await limiter.acquire(k, 0)  # still running when Redis restarts
    await limiter.drain()  # the first check learnt the store's marker
    server.stop()
    server.start()  # empty: counters start over
    with caplog.at_level(logging.WARNING, logger="gateway.limits.redis_limiter"):
        async with asyncio.timeout(10):
            while registry.get_sample_value("resets_total") != 1:
                lease = await limiter.acquire(k, 0)  # checks the marker (the first may fail)
                await lease.settle(0)
                await limiter.drain()
        await in_flight.settle(0)  # the new store never heard of it: lost, not an error
        later = await limiter.acquire(k, 0)
        await later.settle(0)  # known: not lost
        await limiter.drain()
    assert registry.get_sample_value("lost_total") == 1
    assert registry.get_sample_value("resets_total") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("restarted" in m for m in warnings) == 1, warnings


async def test_what_this_process_knows_refuses_before_the_body(clients: list[Any]) -> None:
    """Its own leases at the key's concurrency, or the requests bucket the last reply left
    below one request: refused without asking the store; tokens are left to the store."""
    first, second = (RedisLimiter(client) for client in clients)
    busy = key(concurrency=1)
    assert first.early_refusal(busy) is None
    lease = await first.acquire(busy, 10)
    refused = first.early_refusal(busy)
    assert refused is not None and refused.reason == "concurrency"
    assert second.early_refusal(busy) is None  # it holds none: the store decides
    await lease.settle(5)
    assert first.early_refusal(busy) is None
    spent = key(rpm=1, tpm=1000)
    await second.acquire(spent, 10)
    refused = second.early_refusal(spent)
    assert refused is not None and refused.reason == "requests"
    assert 59.0 < refused.retry_after <= 60.0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.early_refusal(spent) is None  # it has not seen the key yet
    with pytest.raises(RateLimitExceeded):
        await first.acquire(spent, 10)
    assert first.early_refusal(spent) is not None  # now it has
