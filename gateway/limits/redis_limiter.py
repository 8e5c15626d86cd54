"""The shared limiter: the bucket math of :mod:`gateway.limits.bucket` as atomic Lua scripts
in Redis, so every gateway process enforces one limit per key.

Keys: ``{prefix}{name}`` is a hash (``req``, ``tok``, ``ts``) that expires once the buckets
would be full again; ``{prefix}{name}:leases`` is a ZSET of lease ids scored by expiry time,
so a crashed gateway's concurrency slots free themselves after ``lease_ttl`` seconds (set it
above the gateway's total request timeout). Scripts run by EVALSHA, loaded again when Redis
lost them (redis-py's ``Script``).

Time: by default the scripts read Redis's own ``TIME``, so all gateways share one clock.
A ``clock`` may be injected instead (tests); it must then be the same wall clock everywhere.

Redis unreachable (or slower than ``timeout``): with ``on_backend_error="allow"`` requests
pass unlimited, with ``"deny"`` they get 503. Each failure increments ``backend_errors``
(a prometheus Counter, or anything with ``inc()``); the first failure and the recovery are
logged once each. redis-py reconnects by itself, so recovery needs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from redis.exceptions import RedisError

from gateway.errors import UpstreamUnavailable
from gateway.limits.bucket import KeyState, check_reservation, ratelimit_headers, refusal
from gateway.limits.memory_limiter import limits_of

log = logging.getLogger(__name__)

# ARGV: 1 rpm, 2 tpm (0 = unlimited), 3 now ('' = Redis TIME). Sets req, tok, now.
_REFILL = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local s = redis.call('HMGET', KEYS[1], 'req', 'tok', 'ts')
local req = tonumber(s[1]) or rpm
local tok = tonumber(s[2]) or tpm
local ts = tonumber(s[3]) or now
local elapsed = math.max(0, now - ts)
if rpm > 0 then req = math.min(rpm, req + elapsed * rpm / 60) end
if tpm > 0 then tok = math.min(tpm, tok + elapsed * tpm / 60) end
ts = math.max(ts, now)
local function store()
  redis.call('HSET', KEYS[1], 'req', tostring(req), 'tok', tostring(tok), 'ts', tostring(ts))
  local full = 0
  if rpm > 0 then full = math.max(full, (rpm - req) * 60 / rpm) end
  if tpm > 0 then full = math.max(full, (tpm - tok) * 60 / tpm) end
  redis.call('PEXPIRE', KEYS[1], math.ceil((full + 60) * 1000))
end
"""

# ARGV: 4 concurrency (0 = unlimited), 5 tokens, 6 lease id, 7 lease ttl (s).
ACQUIRE_LUA = (
    _REFILL
    + """
local conc = tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local status, reason, wait = 1, '', 0
if conc > 0 and redis.call('ZCARD', KEYS[2]) >= conc then
  status, reason, wait = 0, 'concurrency', 1
else
  local wr, wt = 0, 0
  if rpm > 0 then wr = math.max(0, (1 - req) * 60 / rpm) end
  if tpm > 0 then wt = math.max(0, (tokens - tok) * 60 / tpm) end
  if wr > 0 or wt > 0 then
    status, wait = 0, math.max(wr, wt)
    if wr >= wt then reason = 'requests' else reason = 'tokens' end
  else
    if rpm > 0 then req = req - 1 end
    if tpm > 0 then tok = tok - tokens end
    if conc > 0 then
      local ttl = tonumber(ARGV[7])
      redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
      redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
    end
  end
end
store()
return {status, reason, tostring(wait), tostring(req), tostring(tok)}
"""
)

# ARGV: 4 refund (reserved - used; negative charges the excess), 5 lease id.
SETTLE_LUA = (
    _REFILL
    + """
if tpm > 0 then tok = math.min(tpm, tok + tonumber(ARGV[4])) end
store()
redis.call('ZREM', KEYS[2], ARGV[5])
return 1
"""
)

BACKEND_ERRORS = (RedisError, OSError, TimeoutError)


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class UnlimitedLease:
    """Admitted without the backend (fail-open, or a key without limits)."""

    headers: Mapping[str, str] = {}

    async def settle(self, used_tokens: int) -> None:
        return None


class RedisLease:
    def __init__(
        self, limiter: RedisLimiter, key: Any, reserved: int, lease_id: str, headers: dict
    ) -> None:
        self._limiter, self._key, self._reserved = limiter, key, reserved
        self._lease_id = lease_id
        self._headers: Mapping[str, str] = headers
        self.settled = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def settle(self, used_tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        await self._limiter.release(self._key, self._reserved, used_tokens, self._lease_id)


class RedisLimiter:
    def __init__(
        self,
        client: Any,
        clock: Callable[[], float] | None = None,
        on_backend_error: Literal["allow", "deny"] = "allow",
        backend_errors: Incrementable | None = None,
        lease_ttl: float = 660.0,
        timeout: float = 0.5,
        prefix: str = "vkit:rl:",
    ) -> None:
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._clock = clock
        self._fail_open = on_backend_error == "allow"
        self._backend_errors = backend_errors
        self._lease_ttl = lease_ttl
        self._timeout = timeout
        self._prefix = prefix
        self.backend_healthy = True

    def _keys(self, name: str) -> list[str]:
        base = f"{self._prefix}{{{name}}}"
        return [base, base + ":leases"]

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def acquire(self, key: Any, tokens: int) -> RedisLease | UnlimitedLease:
        limits = limits_of(key)
        check_reservation(limits, tokens)
        if limits.rpm is None and limits.tpm is None and limits.concurrency is None:
            return UnlimitedLease()
        lease_id = secrets.token_hex(8)
        args = [limits.rpm or 0, limits.tpm or 0, self._now(), limits.concurrency or 0]
        args += [tokens, lease_id, self._lease_ttl]
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._acquire(keys=self._keys(key.name), args=args)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            if self._fail_open:
                return UnlimitedLease()
            raise UpstreamUnavailable("the rate limiter's store is unreachable") from None
        self._recovered()
        status, reason, wait, requests, tokens_left = reply
        state = KeyState(requests=float(requests), tokens=float(tokens_left), updated=0.0)
        if not int(status):
            reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            raise refusal(reason, float(wait), state, limits)
        return RedisLease(self, key, tokens, lease_id, ratelimit_headers(state, limits))

    async def release(self, key: Any, reserved: int, used: int, lease_id: str) -> None:
        limits = limits_of(key)
        args = [limits.rpm or 0, limits.tpm or 0, self._now(), reserved - used, lease_id]
        try:
            async with asyncio.timeout(self._timeout):
                await self._settle(keys=self._keys(key.name), args=args)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            return
        self._recovered()

    def _failed(self, exc: BaseException) -> None:
        if self._backend_errors is not None:
            self._backend_errors.inc()
        if self.backend_healthy:
            self.backend_healthy = False
            action = "serving without limits" if self._fail_open else "refusing requests (503)"
            log.error(
                "rate limiter store unreachable (%s); %s until it returns",
                type(exc).__name__,
                action,
            )

    def _recovered(self) -> None:
        if not self.backend_healthy:
            self.backend_healthy = True
            log.warning("rate limiter store reachable again; limits enforced")
