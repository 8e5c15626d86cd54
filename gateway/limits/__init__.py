"""Per-key limits: requests/min, tokens/min (reserved at admission, settled with usage) and
concurrent requests.

    limiter: Limiter = MemoryLimiter(clock=time.monotonic)      # one process
    limiter = RedisLimiter(redis_client, on_backend_error="allow")  # shared by all gateways
    # both take default_concurrency: the slots of a key whose entry sets no concurrency
    lease = await limiter.acquire(key, tokens=prompt_estimate + max_tokens)  # may raise 429
    ...                                    # lease.headers: x-ratelimit-* for the response
    await lease.settle(used_tokens)        # refund the unused part, free the slot; idempotent
    refused = limiter.early_refusal(key)   # before reading a body: the 429 it would get anyway

``acquire`` raises :class:`gateway.errors.RateLimitExceeded` (reason ``requests`` |
``tokens`` | ``concurrency``, ``retry_after``, ``x-ratelimit-*`` headers), or
:class:`gateway.errors.InvalidRequest` when the reservation exceeds the key's whole tpm.
The math is in :mod:`gateway.limits.bucket`. The gateway-wide bound on requests in flight,
whatever their key, is :class:`gateway.limits.in_flight.InFlightLimit`.

- :mod:`.bucket` -- the pure core: two token buckets and a concurrency count per key;
- :mod:`.memory_limiter` -- :class:`MemoryLimiter`, that math on a dict, in one process;
- :mod:`.redis_limiter` -- :class:`RedisLimiter`, that math as atomic Lua scripts in Redis,
  one limit per key shared by every gateway process;
- :mod:`.pending_settles` -- the Redis limiter's releases and undos that Redis has not
  confirmed, kept in order per key and retried until it answers (outages lose none);
- :mod:`.in_flight` -- the gateway-wide bound on requests in flight (one process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.errors import RateLimitExceeded
from gateway.keyfile import ApiKey
from gateway.limits.memory_limiter import MemoryLimiter
from gateway.limits.redis_limiter import RedisLimiter

__all__ = ["Lease", "Limiter", "MemoryLimiter", "RedisLimiter"]


class Lease(Protocol):
    """An admitted request's hold on its key's budget."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The success-path ``x-ratelimit-*`` headers."""
        ...

    async def settle(self, used_tokens: int) -> None: ...


class Limiter(Protocol):
    async def acquire(self, key: ApiKey, tokens: int) -> Lease: ...

    def early_refusal(self, key: ApiKey) -> RateLimitExceeded | None:
        """The 429 any request of ``key`` with a body would get now, decided without the
        body (checked before the body is read), or ``None``."""
        ...
