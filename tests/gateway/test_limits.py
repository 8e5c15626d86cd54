"""The limiter contract, for the memory and the Redis backend alike, with a fake clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from gateway.errors import InvalidRequest, RateLimitExceeded
from gateway.keyfile import ApiKey
from gateway.limits import MemoryLimiter, RedisLimiter
from gateway.limits.bucket import KeyLimits, KeyState, format_duration, ratelimit_headers
from tests.gateway.redis_process import RedisProcess

_names = itertools.count()


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(**limits: Any) -> ApiKey:
    return ApiKey(name=f"k{next(_names)}", sha256="a" * 64, **limits)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


LimiterFactory = Callable[..., Any]  # (clock, default_concurrency=None) -> limiter


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[LimiterFactory]:
    if request.param == "memory":
        yield lambda clock, default_concurrency=None: MemoryLimiter(
            clock=clock, default_concurrency=default_concurrency
        )
        return
    server = request.getfixturevalue("redis_server")
    client = redis.asyncio.from_url(server.url)
    made: list[RedisLimiter] = []

    def make(clock: Any, default_concurrency: int | None = None) -> RedisLimiter:
        # the contract, not the timeout: a loaded CI machine may answer slower than 0.5 s
        limiter = RedisLimiter(
            client,
            clock=clock,
            on_backend_error="deny",
            timeout=5.0,
            default_concurrency=default_concurrency,
        )
        made.append(limiter)
        return limiter

    try:
        yield make
    finally:
        # its background work (store checks, kept releases) ends before the client closes, as
        # at the gateway's shutdown: a check still under way would open a connection after
        for limiter in made:
            await limiter.drain(within=1.0)
        await client.aclose()


async def test_requests_per_minute_refill_and_retry_after(make_limiter: LimiterFactory) -> None:
    clock = FakeClock()
    limiter, k = make_limiter(clock), key(rpm=3)
    leases = [await limiter.acquire(k, 0) for _ in range(3)]
    assert leases[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert leases[-1].headers["x-ratelimit-reset-requests"] == "1m0s"
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.acquire(k, 0)
    assert refused.value.reason == "requests"
    assert refused.value.retry_after == pytest.approx(20.0)
    assert refused.value.headers["retry-after"] == "20"
    assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
    clock.now += 19.9
    with pytest.raises(RateLimitExceeded) as again:
        await limiter.acquire(k, 0)
    assert again.value.retry_after == pytest.approx(0.1)
    assert again.value.headers["retry-after"] == "1"
    clock.now += 0.1
    lease = await limiter.acquire(k, 0)
    assert lease.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_are_reserved_then_refunded(make_limiter: LimiterFactory) -> None:
    clock = FakeClock()
    limiter, k = make_limiter(clock), key(tpm=100)
    first = await limiter.acquire(k, 60)
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-reset-tokens"] == "36s"
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.acquire(k, 50)
    assert refused.value.reason == "tokens"
    assert refused.value.retry_after == pytest.approx(6.0)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "40"
    await first.settle(20)  # 40 of the 60 reserved come back
    await first.settle(0)  # idempotent: no second refund
    second = await limiter.acquire(k, 50)
    assert second.headers["x-ratelimit-remaining-tokens"] == "30"


async def test_usage_above_reservation_is_charged(make_limiter: LimiterFactory) -> None:
    clock = FakeClock()
    limiter, k = make_limiter(clock), key(tpm=100)
    lease = await limiter.acquire(k, 10)
    await lease.settle(70)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.acquire(k, 40)
    assert refused.value.retry_after == pytest.approx(6.0)  # 30 left, 10 missing at 100/min


async def test_reservation_above_whole_budget_is_a_clear_400(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(FakeClock())
    with pytest.raises(InvalidRequest, match="more than the key's whole budget of 100"):
        await limiter.acquire(key(tpm=100), 101)


async def test_concurrency_slots_and_idempotent_settle(make_limiter: LimiterFactory) -> None:
    limiter, k = make_limiter(FakeClock()), key(concurrency=2)
    first = await limiter.acquire(k, 5)
    await limiter.acquire(k, 5)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.acquire(k, 5)
    assert refused.value.reason == "concurrency"
    await first.settle(5)
    await first.settle(5)  # must not free a second slot
    await limiter.acquire(k, 5)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(k, 5)


async def test_default_concurrency_applies_only_to_keys_without_their_own(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(FakeClock(), default_concurrency=1)
    unset, own = key(rpm=100), key(rpm=100, concurrency=2)
    first = await limiter.acquire(unset, 1)
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.acquire(unset, 1)
    assert refused.value.reason == "concurrency"
    assert refused.value.headers["retry-after"] == "1"
    await first.settle(1)
    await limiter.acquire(unset, 1)
    await limiter.acquire(own, 1)
    await limiter.acquire(own, 1)  # its own limit of 2, not the default
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(own, 1)


async def test_racing_tasks_never_overshoot_tpm(make_limiter: LimiterFactory) -> None:
    limiter, k = make_limiter(FakeClock()), key(tpm=1000, rpm=1000)

    async def one() -> bool:
        try:
            await limiter.acquire(k, 100)
        except RateLimitExceeded:
            return False
        return True

    admitted = await asyncio.gather(*(one() for _ in range(40)))
    assert sum(admitted) == 10


async def test_keys_do_not_share_budgets(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(FakeClock())
    a, b = key(rpm=1), key(rpm=1)
    await limiter.acquire(a, 0)
    await limiter.acquire(b, 0)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(a, 0)


async def test_unlimited_key_passes(make_limiter: LimiterFactory) -> None:
    limiter, k = make_limiter(FakeClock()), key()
    for _ in range(50):
        lease = await limiter.acquire(k, 10_000)
    assert "x-ratelimit-limit-requests" not in lease.headers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0004, "1ms"), (0.25, "250ms"), (1.5, "1.5s"), (60, "1m0s"), (61.25, "1m1.25s")],
)
def test_reset_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_floor_remaining_and_skip_unlimited() -> None:
    state = KeyState(requests=2.7, tokens=-5.0, updated=0.0)
    headers = ratelimit_headers(state, KeyLimits(rpm=10, tpm=None, concurrency=None))
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "43.8s",
    }


async def test_memory_limiter_applies_edited_limits() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    k = key(rpm=1)
    await limiter.acquire(k, 0)
    wider = k.model_copy(update={"rpm": 120})
    clock.now += 1  # 2 per second now
    lease = await limiter.acquire(wider, 0)
    assert lease.headers["x-ratelimit-limit-requests"] == "120"
