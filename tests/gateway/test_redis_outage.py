"""The Redis limiter through an outage it did not cause: releases, refunds and undos that
could not be written are kept and applied when Redis answers again, before this gateway
admits the key's next request. The outages are real and bounded: ``redis-server`` frozen
(SIGSTOP) or stopped and started again with its data (append-only file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import UpstreamUnavailable
from gateway.keyfile import ApiKey
from gateway.limits import RedisLimiter
from tests.gateway.redis_process import RedisProcess, redis_clients, running_redis
from tests.gateway.test_redis_limiter import FakeClock, key

pytestmark = pytest.mark.integration

# Longer than every try of a background settle (0 + 0.2 + 1.0 s of waits, 0.2 s each).
OUTAGE_S = 2.5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path, persistent=True) as process:
        yield process


@pytest.fixture
async def clients(server: RedisProcess) -> AsyncIterator[list[Any]]:
    async with redis_clients(server, 2) as made:
        yield made


Outage = tuple[Callable[[], None], Callable[[], None]]


@pytest.fixture(params=["frozen", "restarted"])
def outage(request: pytest.FixtureRequest, server: RedisProcess) -> Outage:
    """(begin, end) of an outage that keeps Redis's data."""
    if request.param == "frozen":
        return server.pause, server.resume
    return server.stop, server.start


async def leases_of(client: Any, k: ApiKey) -> int:
    return int(await client.zcard(f"vkit:rl:{{{k.name}}}:leases"))


async def until_no_lease(client: Any, k: ApiKey, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while await leases_of(client, k):
            await asyncio.sleep(0.05)


async def released_in_an_outage(
    limiter: RedisLimiter, k: ApiKey, outage: Outage, reserved: int, used: int
) -> None:
    """A request of ``k`` admitted before the outage, settled during it."""
    begin, end = outage
    lease = await limiter.acquire(k, reserved)
    begin()
    try:
        await lease.settle(used)  # nothing written
        await asyncio.sleep(OUTAGE_S)
    finally:
        end()


async def test_a_release_in_an_outage_is_applied_when_redis_returns(
    clients: list[Any], outage: Outage
) -> None:
    clock = FakeClock()
    limiter = RedisLimiter(clients[0], clock=clock, timeout=0.2)
    k = key(concurrency=1, tpm=1000)
    await released_in_an_outage(limiter, k, outage, reserved=600, used=100)
    await until_no_lease(clients[1], k)  # nobody asked: the kept release was applied
    other = await RedisLimiter(clients[1], clock=clock).acquire(k, 0)  # another gateway
    assert other.headers["x-ratelimit-remaining-tokens"] == "900"  # the refund, once
    await limiter.drain()


async def test_the_next_request_waits_for_the_kept_release(
    clients: list[Any], outage: Outage
) -> None:
    limiter = RedisLimiter(clients[0], clock=FakeClock(), timeout=0.2)
    k = key(concurrency=1, tpm=1000)
    await released_in_an_outage(limiter, k, outage, reserved=600, used=0)
    following = await limiter.acquire(k, 0)  # right away: the release goes first
    assert following.headers["x-ratelimit-remaining-tokens"] == "1000"
    await following.settle(0)
    await limiter.drain()
    assert await leases_of(clients[1], k) == 0


async def test_an_acquire_lost_in_an_outage_is_undone_when_redis_returns(
    server: RedisProcess, clients: list[Any]
) -> None:
    limiter = RedisLimiter(clients[0], on_backend_error="allow", timeout=0.2)
    k = key(concurrency=1, rpm=10)
    # Connected and the script loaded, so that the acquire below reaches Redis's socket whole
    # and runs when Redis wakes up, after the gateway gave up on it.
    await limiter.acquire(key(rpm=10), 0)
    server.pause()
    try:
        admitted = await limiter.acquire(k, 0)  # sent, unanswered: served without limits
        assert dict(admitted.headers) == {}
        await asyncio.sleep(OUTAGE_S)
    finally:
        server.resume()  # the acquire runs now, and must be undone after it
    await until_no_lease(clients[1], k)
    other = await RedisLimiter(clients[1]).acquire(k, 0)
    assert other.headers["x-ratelimit-remaining-requests"] == "9"  # its request given back
    await limiter.drain()


async def test_fail_closed_refuses_in_the_outage_and_reconciles_after(
    server: RedisProcess, clients: list[Any]
) -> None:
    limiter = RedisLimiter(clients[0], on_backend_error="deny", timeout=0.2)
    k = key(concurrency=1)
    lease = await limiter.acquire(k, 0)
    server.pause()
    try:
        await lease.settle(0)
        with pytest.raises(UpstreamUnavailable):
            await limiter.acquire(k, 0)
        await asyncio.sleep(OUTAGE_S)
    finally:
        server.resume()
    await until_no_lease(clients[1], k)
    await (await limiter.acquire(k, 0)).settle(0)
    await limiter.drain()


class DelayedSettles:
    """The Redis client, but a settle script waits ``delay`` s before it is sent, as a
    release does while its connection is still being opened."""

    def __init__(self, client: Any, delay: float) -> None:
        self._client = client
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, source: str) -> Any:
        script = self._client.register_script(source)
        if "done_ttl" not in source:  # the acquire script
            return script

        async def call(**kwargs: Any) -> Any:
            await asyncio.sleep(self._delay)
            return await script(**kwargs)

        return call


async def test_a_release_under_way_goes_before_the_next_acquire(clients: list[Any]) -> None:
    limiter = RedisLimiter(DelayedSettles(clients[0], delay=0.1))
    k = key(concurrency=1)
    first = await limiter.acquire(k, 0)
    ending = asyncio.create_task(first.settle(0))  # the answer is out, its release under way
    await asyncio.sleep(0)
    second = await limiter.acquire(k, 0)  # the client's next request
    await ending
    await second.settle(0)
    await limiter.drain()
    assert await leases_of(clients[1], k) == 0
