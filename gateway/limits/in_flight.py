"""The gateway-wide bound on requests in flight (one gateway process).

    bound = InFlightLimit(settings.max_in_flight)
    if not bound.enter():   # full: the caller answers 503 with Retry-After
        ...
    bound.leave()           # once per successful enter, when the request is done

Each request in flight holds at most one upstream connection, so a bound below the upstream
pool's size keeps requests from taking every connection; the per-key share is the limiter's
concurrency (``default_key_concurrency`` for keys that set none).
"""

from __future__ import annotations


class InFlightLimit:
    """At most ``limit`` requests between :meth:`enter` and :meth:`leave`; asyncio-safe
    because nothing awaits between the check and the count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count = max(0, self.count - 1)
