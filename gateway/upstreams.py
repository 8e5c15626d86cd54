"""The set of upstreams, their readiness, and which one a request tries next.

Readiness is written by the background prober (:mod:`gateway.health`), never per request;
the aware router may only take an upstream *out* at once (:meth:`UpstreamPool.mark_down`,
a refused connection), and the prober alone puts it back. :meth:`UpstreamPool.candidates`
yields upstreams round-robin, ready ones first; before the first probe has finished every
upstream counts as a candidate, so a fresh gateway does not refuse traffic it could serve.

Each upstream also carries what it serves (:attr:`Upstream.models`, its model cards in
:attr:`Upstream.served`: base models and LoRA adapters, :mod:`gateway.served_models`), as the
prober last read it from its ``/v1/models``. What an upstream served is kept while it is
down, so a model whose every replica is down is still known (its requests wait or get a
503, not a 404); its next listing replaces it (an adapter unloaded at run time is gone).
Every choice may be narrowed to the upstreams that serve one name (``model``): the
candidates, whether any can serve, the wait for one to be ready.

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

from gateway.served_models import NOTHING, ServedModels
from gateway.spill_settings import LOCAL

# Round-robin turns kept per model name; past this many names (adapters come and go) the
# turns start over.
_MAX_TURNS = 1024


@dataclass(slots=True, eq=False)
class Upstream:
    url: str
    label: str  # host:port, a bounded metric label
    ready: bool = False
    probed: bool = False
    # served names, last listed; set by UpstreamPool.record only (the pool caches who serves what)
    models: frozenset[str] = field(default_factory=frozenset)
    served: ServedModels = NOTHING  # its model cards as last listed (adapters with a parent)
    in_flight: int = 0  # this gateway's requests on it now (sent, answer not yet released)
    removed: bool = False  # dropped from the pool (discovery): its metrics are not written
    backend: str = LOCAL  # who bills it: local, or the spill-over endpoint's name (gateway.spill)


class UpstreamPool:
    def __init__(self, urls: list[str]) -> None:
        self.upstreams = [_upstream(u) for u in urls]
        self._next = 0
        self._turns: dict[str, int] = {}  # model -> its next round-robin turn
        self._known: frozenset[str] = frozenset()
        # served name -> its upstreams, for the names some upstream serves: asked 3 times a
        # request (a list built each time: 0.55-0.63 -> 0.13-0.27 us a call, timeit here,
        # 2026-12-07); cleared where the names change
        self._serving: dict[str, list[Upstream]] = {}
        self._ready_event: asyncio.Event | None = None
        self.waiting = 0  # requests held in wait_ready now

    def serving(self, model: str | None) -> list[Upstream]:
        """The upstreams that serve ``model`` (``None``: every upstream); a list the caller
        leaves as it is."""
        if model is None:
            return self.upstreams
        serving = self._serving.get(model)
        if serving is None:
            serving = [u for u in self.upstreams if model in u.models]
            if model in self._known:  # a bounded cache: only the names served
                self._serving[model] = serving
        return serving

    def candidates(self, attempts: int, model: str | None = None) -> list[Upstream]:
        """Up to ``attempts`` upstreams to try in order, starting round-robin; only those
        serving ``model`` when one is named (each name takes its own turns)."""
        upstreams = self.serving(model)
        count = len(upstreams)
        if not count:
            return []
        if count == 1:  # one upstream (a single replica, or NGINX in front of them)
            return upstreams * attempts
        if model is None:
            start = self._next % count
            self._next = (start + 1) % count
        else:
            turns = self._turns
            if len(turns) >= _MAX_TURNS and model not in turns:
                turns.clear()
            start = turns.get(model, 0) % count
            turns[model] = (start + 1) % count
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

    def any_ready_for(self, model: str | None) -> bool:
        return any(u.ready for u in self.serving(model))

    @property
    def none_can_serve(self) -> bool:
        """Every upstream has been probed and none is ready (or there are none)."""
        return not self.any_ready and all(u.probed for u in self.upstreams)

    def cannot_serve(self, model: str | None) -> bool:
        """Every upstream serving ``model`` has been probed and none is ready (or none
        serves it); ``None``: :attr:`none_can_serve`."""
        if model is None:
            return self.none_can_serve
        # Loops, not any()/all() over generators: twice a request (0.6-0.7 -> 0.2-0.3 us a
        # call, timeit here, 2026-12-07)
        servers = self.serving(model)
        for upstream in servers:
            if upstream.ready:
                return False
        for upstream in servers:  # noqa: SIM110
            if not upstream.probed:
                return False
        return True

    def known_models(self) -> frozenset[str]:
        """Every name some upstream of the pool serves (or served before it went down)."""
        return self._known

    def record(
        self,
        upstream: Upstream,
        ready: bool,
        models: frozenset[str],
        served: ServedModels | None = None,
    ) -> None:
        """The prober's verdict on ``upstream`` and the names it lists (``served``: their
        cards); wakes the requests held for a ready one. A verdict that lists no name (no
        answer, or not serving yet) keeps what the upstream served before."""
        upstream.ready = ready
        upstream.probed = True
        if models and models != upstream.models:
            upstream.models = models
            upstream.served = served if served is not None else _bare(models)
            self._know()
        elif models and served is not None:
            upstream.served = served
        if ready and self._ready_event is not None:
            self._ready_event.set()

    def mark_down(self, upstream: Upstream) -> None:
        """Out of rotation now (it refused a connection); the next probe judges it again."""
        upstream.ready = False
        upstream.probed = True

    async def wait_ready(self, timeout: float, model: str | None = None) -> bool:
        """Wait up to ``timeout`` s for some upstream (serving ``model``, when named) to be
        ready; whether one is."""
        if self.any_ready_for(model):
            return True
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while not self.any_ready_for(model):
                    if self._ready_event is None or self._ready_event.is_set():
                        self._ready_event = asyncio.Event()
                    await self._ready_event.wait()
        except TimeoutError:
            return self.any_ready_for(model)
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
        self._know()
        return True

    def _know(self) -> None:
        """Recompute the union of served names (on a change, never per request); what
        serves each name is found again when next asked."""
        self._serving = {}
        models: frozenset[str] = frozenset()
        for upstream in self.upstreams:
            models |= upstream.models
        self._known = models


def _bare(models: frozenset[str]) -> ServedModels:
    """Cards for names listed without them (a verdict alone)."""
    cards = tuple({"id": name, "object": "model"} for name in sorted(models))
    return ServedModels(cards, models)


def _upstream(url: str) -> Upstream:
    return Upstream(url=url.rstrip("/"), label=_label(url))


def _label(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url
