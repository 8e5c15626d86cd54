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
        # name -> (the key object its limits were built from, its limits, its state): one
        # lookup a check (three dict lookups and two calls each before)
        self._keys: dict[str, tuple[Any, KeyLimits, KeyState]] = {}

    def _entry(self, key: Any) -> tuple[Any, KeyLimits, KeyState]:
        """The key's limits, built once per key object (a reload brings new objects, new
        limits), and its state, kept across reloads."""
        entry = self._keys.get(key.name)
        if entry is None or entry[0] is not key:
            limits = limits_of(key, self._default_concurrency)
            state = entry[2] if entry is not None else fresh_state(limits, self._clock())
            entry = self._keys[key.name] = (key, limits, state)
        return entry

    def state(self, key: Any) -> KeyState:
        return self._entry(key)[2]

    async def acquire(self, key: Any, tokens: int) -> MemoryLease:
        _, limits, state = self._entry(key)
        headers = admit(state, limits, tokens, self._clock())
        return MemoryLease(self, key, tokens, headers)

    def early_refusal(self, key: Any) -> RateLimitExceeded | None:
        """The 429 any request of ``key`` with a body would get now (its concurrency, its
        requests, or no token left), or ``None``: exact, from the state itself."""
        _, limits, state = self._entry(key)
        return refusal_now(state, limits, 1, self._clock())

    def release(self, key: Any, reserved: int, used: int) -> None:
        _, limits, state = self._entry(key)
        settle(state, limits, reserved, used, self._clock())
