"""The in-process limiter: the bucket math of :mod:`gateway.limits.bucket` on a dict.

asyncio-safe because nothing awaits between reading and writing a key's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import RateLimitExceeded
from gateway.limits.bucket import KeyLimits, KeyState, admit, fresh_state, refusal_now, settle


def limits_of(key: Any, default_concurrency: int | None = None) -> KeyLimits:
    """The key's limits; ``default_concurrency`` stands in for a concurrency the key's file
    entry does not set (``GatewaySettings.default_key_concurrency``)."""
    concurrency = key.concurrency if key.concurrency is not None else default_concurrency
    return KeyLimits(rpm=key.rpm, tpm=key.tpm, concurrency=concurrency)


class MemoryLease:
    def __init__(
        self, limiter: MemoryLimiter, key: Any, reserved: int, headers: dict[str, str]
    ) -> None:
        self._limiter = limiter
        self._key = key
        self._reserved = reserved
        self._headers = headers
        self.settled = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def settle(self, used_tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        self._limiter.release(self._key, self._reserved, used_tokens)


class MemoryLimiter:
    """Limits for one gateway process; ``clock`` returns seconds (e.g. ``time.monotonic``);
    ``default_concurrency`` applies to keys that set no concurrency of their own."""

    def __init__(self, clock: Callable[[], float], default_concurrency: int | None = None) -> None:
        self._clock = clock
        self._default_concurrency = default_concurrency
        self._states: dict[str, KeyState] = {}
        self._limits_of: dict[str, tuple[Any, KeyLimits]] = {}

    def _limits(self, key: Any) -> KeyLimits:
        """The key's limits, built once per key object (a reload brings new objects)."""
        cached = self._limits_of.get(key.name)
        if cached is None or cached[0] is not key:
            cached = self._limits_of[key.name] = (key, limits_of(key, self._default_concurrency))
        return cached[1]

    def state(self, key: Any) -> KeyState:
        limits = self._limits(key)
        state = self._states.get(key.name)
        if state is None:
            state = self._states[key.name] = fresh_state(limits, self._clock())
        return state

    async def acquire(self, key: Any, tokens: int) -> MemoryLease:
        headers = admit(self.state(key), self._limits(key), tokens, self._clock())
        return MemoryLease(self, key, tokens, headers)

    def early_refusal(self, key: Any) -> RateLimitExceeded | None:
        """The 429 any request of ``key`` with a body would get now (its concurrency, its
        requests, or no token left), or ``None``: exact, from the state itself."""
        return refusal_now(self.state(key), self._limits(key), 1, self._clock())

    def release(self, key: Any, reserved: int, used: int) -> None:
        settle(self.state(key), self._limits(key), reserved, used, self._clock())
