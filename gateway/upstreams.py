"""The set of upstreams, their readiness, and which one a request tries next.

Readiness is written by the background prober (:mod:`gateway.health`), never per request;
the aware router may only take an upstream *out* at once (:meth:`UpstreamPool.mark_down`,
a refused connection), and the prober alone puts it back. :meth:`UpstreamPool.candidates`
yields upstreams round-robin, ready ones first; before the first probe has finished every
upstream counts as a candidate, so a fresh gateway does not refuse traffic it could serve.

Each upstream carries the gateway's own exact count of requests in flight on it
(:attr:`Upstream.in_flight`, see :class:`gateway.routing.InFlightResponse`). Waiting for
any upstream to become ready (request holding) is :meth:`UpstreamPool.wait_ready`. The
list itself may change (:meth:`UpstreamPool.replace`, discovery): kept upstreams keep
their state, new ones start unprobed, dropped ones are marked :attr:`Upstream.removed` (a
probe or scrape still under way then records nothing for them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(slots=True, eq=False)
class Upstream:
    url: str
    label: str  # host:port, a bounded metric label
    ready: bool = False
    probed: bool = False
    models: frozenset[str] = field(default_factory=frozenset)
    in_flight: int = 0  # this gateway's requests on it now (sent, answer not yet released)
    removed: bool = False  # dropped from the pool (discovery): its metrics are not written


class UpstreamPool:
    def __init__(self, urls: list[str]) -> None:
        self.upstreams = [_upstream(u) for u in urls]
        self._next = 0
        self._ready_event: asyncio.Event | None = None
        self.waiting = 0  # requests held in wait_ready now

    def candidates(self, attempts: int) -> list[Upstream]:
        """Up to ``attempts`` upstreams to try in order, starting round-robin."""
        upstreams = self.upstreams
        count = len(upstreams)
        if not count:
            return []
        start = self._next % count
        self._next = (start + 1) % count
        if count == 1:  # one upstream (a single replica, or NGINX in front of them)
            return upstreams * attempts
        rotated = [upstreams[(start + i) % count] for i in range(count)]
        usable = [u for u in rotated if u.ready or not u.probed]
        ordered = usable + [u for u in rotated if u not in usable]
        return [ordered[i % count] for i in range(attempts)]

    @property
    def any_ready(self) -> bool:
        # Not any() over a generator: a generator a call, and this runs once per request.
        for upstream in self.upstreams:  # noqa: SIM110
            if upstream.ready:
                return True
        return False

    @property
    def none_can_serve(self) -> bool:
        """Every upstream has been probed and none is ready (or there are none)."""
        return not self.any_ready and all(u.probed for u in self.upstreams)

    def known_models(self) -> frozenset[str]:
        models: frozenset[str] = frozenset()
        for upstream in self.upstreams:
            models |= upstream.models
        return models

    def record(self, upstream: Upstream, ready: bool, models: frozenset[str]) -> None:
        """The prober's verdict on ``upstream``; wakes the requests held for a ready one."""
        upstream.ready = ready
        upstream.probed = True
        upstream.models = models
        if ready and self._ready_event is not None:
            self._ready_event.set()

    def mark_down(self, upstream: Upstream) -> None:
        """Out of rotation now (it refused a connection); the next probe judges it again."""
        upstream.ready = False
        upstream.probed = True

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for some upstream to be ready; whether one is."""
        if self.any_ready:
            return True
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while not self.any_ready:
                    if self._ready_event is None or self._ready_event.is_set():
                        self._ready_event = asyncio.Event()
                    await self._ready_event.wait()
        except TimeoutError:
            return self.any_ready
        finally:
            self.waiting -= 1
        return True

    def replace(self, urls: list[str]) -> bool:
        """Serve ``urls`` from now on; whether the list changed. Upstreams kept keep their
        readiness and in-flight counts; new ones start unprobed."""
        wanted = [u.rstrip("/") for u in urls]
        if wanted == [u.url for u in self.upstreams]:
            return False
        before = self.upstreams
        current = {u.url: u for u in before}
        self.upstreams = [current.get(url) or _upstream(url) for url in wanted]
        for upstream in before:
            upstream.removed = upstream not in self.upstreams  # eq=False: by identity
        return True


def _upstream(url: str) -> Upstream:
    return Upstream(url=url.rstrip("/"), label=_label(url))


def _label(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url
