"""The shared limiter: the bucket math of :mod:`gateway.limits.bucket` as atomic Lua scripts
in Redis, so every gateway process enforces one limit per key.

Keys: ``{prefix}{name}`` is a hash (``req``, ``tok``, ``ts``) that expires once the buckets
would be full again; ``{prefix}{name}:leases`` is a ZSET of the ids of the requests in
flight, scored by expiry time, so a crashed gateway's concurrency slots free themselves after
``lease_ttl`` seconds (set it above the gateway's total request timeout);
``{prefix}{name}:done`` holds the ids released in the last ``done_ttl`` seconds. Scripts run
by EVALSHA, loaded again when Redis lost them (redis-py's ``Script``).

Idempotent by request id: acquiring an id that is held again takes nothing more, acquiring
an id already released (or undone) takes nothing at all, and releasing an id twice refunds
once. So a call that timed out on our side -- whose script may still run in Redis -- is
undone (an acquire: its request, tokens and slot are given back) or retried (a release) in
the background, in any order with the late script.

Releases and undos go through :class:`gateway.limits.pending_settles.PendingSettles`: one that
Redis did not confirm is kept (its refund with it) and retried until Redis answers, however
long the outage; and before this process admits a key's next request, the key's kept or
in-flight settles are applied first. So a key's strictly sequential requests on one gateway
never see the previous one's slot still held (a release may otherwise reach Redis after the
next acquire: on a connection still being opened, for one), and after an outage no lease
stays held longer than it takes Redis to answer again. Policy and trade-offs:
``docs/shared-limits.md``.

Time: by default the scripts read Redis's own ``TIME``, so all gateways share one clock.
A ``clock`` may be injected instead (tests); it must then be the same wall clock everywhere.

Redis unreachable (or slower than ``timeout``): with ``on_backend_error="allow"`` requests
pass unlimited, with ``"deny"`` they get 503 -- a key with kept settles included: its next
request waits for them, and for Redis. Each failure increments ``backend_errors``
(a prometheus Counter, or anything with ``inc()``); the first failure and the recovery are
logged once each. redis-py reconnects by itself, so recovery needs nothing.

Redis restarted (without persistence) or flushed: every counter starts over. At most every
``check_interval`` seconds the limiter reads a marker key (``{prefix}store-id``) that it
writes when missing; a changed marker is logged once as a WARNING and counted in
``resets``. A lease the store no longer knows when its request settles (the restart, or an
expired lease) is counted in ``leases_lost``, never an error for the request.

Refused before the body is read (:meth:`RedisLimiter.early_refusal`), from what this process
knows without asking the store: the key's leases it holds itself (at its concurrency: 429),
and the key's requests bucket as the last reply left it, refilled at the key's rate since
(other gateways only take from it): below one request, 429. Tokens are left to the script:
a settle anywhere gives tokens back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.errors import RateLimitExceeded, UpstreamUnavailable
from gateway.limits.bucket import (
    KeyLimits,
    KeyState,
    check_reservation,
    fresh_state,
    ratelimit_headers,
    refill,
    refusal,
    seconds_until,
)
from gateway.limits.memory_limiter import limits_of
from gateway.limits.pending_settles import PendingSettles, Settle

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

# KEYS: 1 bucket hash, 2 leases ZSET, 3 done ZSET.
# ARGV: 4 concurrency (0 = unlimited), 5 tokens, 6 lease id, 7 lease ttl (s).
# Status: 1 admitted (or already held under this id), 0 refused, 2 this id was released.
ACQUIRE_LUA = (
    _REFILL
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZSCORE', KEYS[3], ARGV[6]) then
  return {2, 'released', '0', tostring(req), tostring(tok)}
end
if redis.call('ZSCORE', KEYS[2], ARGV[6]) then
  return {1, '', '0', tostring(req), tostring(tok)}
end
local conc = tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
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
    local ttl = tonumber(ARGV[7])
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
    redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
  end
end
store()
return {status, reason, tostring(wait), tostring(req), tostring(tok)}
"""
)

# ARGV: 4 refund (reserved - used; negative charges the excess), 5 lease id, 6 '1' to give
# the request back too (undoing an acquire), 7 seconds the id stays in the done ZSET.
# Returns 1 settled, 0 not held (expired, Redis restarted, or an undo ahead of its acquire),
# 2 settled before.
SETTLE_LUA = (
    _REFILL
    + """
local done_ttl = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZSCORE', KEYS[3], ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[3], now + done_ttl, ARGV[5])
redis.call('PEXPIRE', KEYS[3], math.ceil(done_ttl * 1000))
if redis.call('ZREM', KEYS[2], ARGV[5]) == 0 then return 0 end
if tpm > 0 then tok = math.min(tpm, tok + tonumber(ARGV[4])) end
if rpm > 0 and ARGV[6] == '1' then req = math.min(rpm, req + 1) end
store()
return 1
"""
)

BACKEND_ERRORS = (RedisError, OSError, TimeoutError)
_TIMEOUTS = (TimeoutError, RedisTimeout)  # the command may have reached Redis and run
_NOT_HELD, _SETTLED, _SETTLED_BEFORE = 0, 1, 2


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
        self.lease_id = lease_id
        self._headers: Mapping[str, str] = headers
        self.settled = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def settle(self, used_tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        await self._limiter.release(self._key, self._reserved, used_tokens, self.lease_id)


class RedisLimiter:
    """``resets`` and ``leases_lost`` count store restarts and leases the store forgot (or
    that were dropped: more than ``max_pending`` settles kept in one outage);
    ``default_concurrency`` applies to keys that set no concurrency; ``retry_delays`` are the
    waits before each background try to undo an acquire or to repeat a release, the last
    repeated until Redis answers."""

    def __init__(
        self,
        client: Any,
        clock: Callable[[], float] | None = None,
        on_backend_error: Literal["allow", "deny"] = "allow",
        backend_errors: Incrementable | None = None,
        resets: Incrementable | None = None,
        leases_lost: Incrementable | None = None,
        default_concurrency: int | None = None,
        lease_ttl: float = 660.0,
        done_ttl: float = 60.0,
        timeout: float = 0.5,
        check_interval: float = 5.0,
        retry_delays: Sequence[float] = (0.0, 0.2, 1.0),
        max_pending: int = 10_000,
        prefix: str = "vkit:rl:",
    ) -> None:
        self._client = client
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._clock = clock
        self._fail_open = on_backend_error == "allow"
        self._backend_errors = backend_errors
        self._resets = resets
        self._leases_lost = leases_lost
        self._default_concurrency = default_concurrency
        self._lease_ttl = lease_ttl
        self._done_ttl = done_ttl
        self._timeout = timeout
        self._check_interval = check_interval
        self._pending = PendingSettles(self._apply, retry_delays, max_pending, self._lease_lost)
        self._prefix = prefix
        self._marker = f"{prefix}store-id"
        self._store_id: bytes | None = None
        self._checked_at: float | None = None
        self._checking = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.backend_healthy = True
        self._held: dict[str, int] = {}  # per key: the leases this process holds
        self._seen: dict[str, KeyState] = {}  # per key: the levels of the last reply

    def _keys(self, name: str) -> list[str]:
        base = f"{self._prefix}{{{name}}}"
        return [base, base + ":leases", base + ":done"]

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    def _limits(self, key: Any) -> KeyLimits:
        return limits_of(key, self._default_concurrency)

    def _settle_args(self, limits: KeyLimits, refund: int, lease_id: str, undo: bool) -> list:
        args: list[Any] = [limits.rpm or 0, limits.tpm or 0, self._now(), refund, lease_id]
        return [*args, "1" if undo else "0", self._done_ttl]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self._timeout):
            return await script(keys=keys, args=args)

    async def acquire(self, key: Any, tokens: int) -> RedisLease | UnlimitedLease:
        limits = self._limits(key)
        check_reservation(limits, tokens)
        if limits.rpm is None and limits.tpm is None and limits.concurrency is None:
            return UnlimitedLease()
        name = key.name
        if name in self._pending and not await self._pending.flush(name):
            return self._without_store()  # the key's earlier releases first: Redis is away
        lease_id = secrets.token_hex(8)
        keys = self._keys(name)
        args = [limits.rpm or 0, limits.tpm or 0, self._now(), limits.concurrency or 0]
        args += [tokens, lease_id, self._lease_ttl]
        try:
            reply = await self._run(self._acquire, keys, args)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            if isinstance(exc, _TIMEOUTS):  # it may still run: take back what it takes
                undo = self._settle_args(limits, tokens, lease_id, undo=True)
                kept = self._pending.add(name, Settle(keys, undo, count_lost=False))
                self._spawn(self._undo(name, kept))
            return self._without_store()
        self._recovered()
        self._check_store_soon()
        status, reason, wait, requests, tokens_left = reply
        if int(status) == _SETTLED_BEFORE:  # only a late repeat of an undone call sees this
            return self._without_store()
        state = KeyState(requests=float(requests), tokens=float(tokens_left), updated=0.0)
        self._seen[key.name] = KeyState(state.requests, state.tokens, time.monotonic())
        if not int(status):
            reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            raise refusal(reason, float(wait), state, limits)
        self._held[key.name] = self._held.get(key.name, 0) + 1
        return RedisLease(self, key, tokens, lease_id, ratelimit_headers(state, limits))

    def early_refusal(self, key: Any) -> RateLimitExceeded | None:
        """The 429 any request of ``key`` would get now, as far as this process knows
        without asking the store (the module docstring), or ``None``."""
        limits, now = self._limits(key), time.monotonic()
        seen = self._seen.get(key.name)
        state = fresh_state(limits, now) if seen is None else replace(seen)
        refill(state, limits, now)
        if limits.concurrency is not None and self._held.get(key.name, 0) >= limits.concurrency:
            return refusal("concurrency", 1.0, state, limits)
        if limits.rpm is not None and state.requests < 1:
            wait = seconds_until(state.requests, 1.0, limits.rpm)
            return refusal("requests", wait, state, limits)
        return None

    async def release(self, key: Any, reserved: int, used: int, lease_id: str) -> None:
        """Refund ``reserved - used`` and free the slot of ``lease_id``; idempotent. A release
        Redis does not confirm is kept and repeated until it does (the key's next acquire
        here waits for it); one the store does not know is counted lost."""
        name = key.name
        self._held[name] = max(0, self._held.get(name, 0) - 1)
        args = self._settle_args(self._limits(key), reserved - used, lease_id, undo=False)
        kept = self._pending.add(name, Settle(self._keys(name), args, count_lost=True))
        await self._pending.attempt(name, kept)

    async def _undo(self, name: str, undo: Settle) -> None:
        await self._pending.attempt(name, undo)

    async def _apply(self, settle: Settle) -> bool:
        """One try of a kept settle; ``False`` when Redis did not answer."""
        try:
            result = await self._run(self._settle, settle.keys, settle.args)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            return False
        self._recovered()
        if settle.count_lost and int(result) == _NOT_HELD:
            self._lease_lost()
        return True

    def _lease_lost(self) -> None:
        if self._leases_lost is not None:
            self._leases_lost.inc()

    def _without_store(self) -> UnlimitedLease:
        if self._fail_open:
            return UnlimitedLease()
        raise UpstreamUnavailable("the rate limiter's store is unreachable")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, within: float | None = None) -> None:
        """Wait for the background work: undos, kept releases, store checks; with ``within``
        (at shutdown), stop retrying the kept settles after that many seconds."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pending.drain(within)

    def _check_store_soon(self) -> None:
        """Check the store's marker, at most once per ``check_interval`` seconds."""
        now = asyncio.get_running_loop().time()
        due = self._checked_at is None or now - self._checked_at >= self._check_interval
        if due and not self._checking:
            self._checked_at, self._checking = now, True
            self._spawn(self._check_store())

    async def _check_store(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(self._marker, secrets.token_hex(8), nx=True)
                current = await self._client.get(self._marker)
        except BACKEND_ERRORS:
            return
        finally:
            self._checking = False
        if self._store_id is not None and current != self._store_id:
            if self._resets is not None:
                self._resets.inc()
            log.warning(
                "the rate limiter's store (Redis) restarted or lost its data: every key's "
                "limits start over (full buckets, no slots held); leases of the requests in "
                "flight are counted as lost when they settle"
            )
        self._store_id = current

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
            self._pending.wake()  # the releases kept through the outage, now
            log.warning("rate limiter store reachable again; limits enforced")
