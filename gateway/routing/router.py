"""Which replica a request goes to, and which ones its retries try. Pure but for the
clock and the metrics, both passed in.

:class:`RoundRobinRouter` is the pool's own order (``routing: round_robin``, normally one
NGINX). :class:`AwareRouter` (``routing: aware``) sees every replica. Both choose only among
the upstreams that serve the request's ``model`` (a base model or a LoRA adapter, as each
upstream lists them: :mod:`gateway.served_models`), so each model's replicas are a group of
their own: its ring, its loads, its least loaded one; ``model`` ``None`` (nothing listed
yet) is every upstream.

1. Only ready replicas (the prober's verdict, :mod:`gateway.health`; one that refused a
   connection or answered that it is shutting down is out at once,
   :meth:`AwareRouter.connect_failed`, :meth:`AwareRouter.shutting_down`). None ready: the pool's
   own order, reason ``fallback``.
2. Every ready replica's queue above ``max_waiting`` (a fresh scrape says so): refused,
   503 + ``Retry-After`` (:data:`OVERLOADED_CODE`), counted in ``routing_overloaded``.
3. A request with a prefix key (:mod:`gateway.routing.affinity`, read at admission from the
   parsed body by :meth:`AwareRouter.request_key`) goes to the key's
   replica: where the key went before, or for a new key the first replica on its ring walk
   (:mod:`gateway.routing.ring`) holding no more than its share of the active keys
   (:mod:`gateway.routing.key_table`, each tenant within its share of it;
   ``key_table_size: 0``: the ring owner alone). That
   replica takes it within the bounded load, reason ``affinity``; over it, the next in the
   walk that is within, reason ``load_spill`` (the key stays where it is). Without a key:
   the lowest score (load plus KV fill; ties taken in turn, so idle replicas share
   sequential requests), reason ``least_loaded``.
4. The retries (only of attempts no replica can have started, :mod:`gateway.upstream_call`) go to
   the next replicas of that order, a different one each while there are others; a replica
   whose queue is over the bound comes last.

Loads are :func:`gateway.routing.load.view` of the last scrape (``scrapes``, written by
:class:`gateway.routing.scraper.LoadScraper`) and the exact in-flight counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import UpstreamUnavailable
from gateway.routing.affinity import prefix_key
from gateway.routing.key_table import KeyTable
from gateway.routing.load import LoadView, Scrape, view
from gateway.routing.ring import HashRing, bounded_pick
from gateway.settings import RouterSettings
from gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger("vkit.gateway.routing")

AFFINITY = "affinity"
LOAD_SPILL = "load_spill"
LEAST_LOADED = "least_loaded"
FALLBACK = "fallback"
ROUND_ROBIN = "round_robin"
REASONS = (AFFINITY, LOAD_SPILL, LEAST_LOADED, FALLBACK)
OVERLOADED_CODE = "replicas_overloaded"
OVERLOADED_RETRY_AFTER_S = 1
_MAX_RINGS = 64  # rings kept, one per member set (model groups, replicas coming and going)
_MAX_TURNS = 1024  # models whose turns among equally loaded replicas are kept


@dataclass(frozen=True, slots=True)
class Route:
    """The upstreams to try in order (one per attempt) and why the first was chosen."""

    candidates: list[Upstream]
    reason: str


class Router(Protocol):
    def request_key(self, path: str, data: Mapping[str, Any]) -> int | None:
        """The affinity key of a request's parsed body (admission asks, once)."""

    def route(
        self, path: str, key: int | None, attempts: int, tenant: str = "", model: str | None = None
    ) -> Route:
        """Raises UpstreamUnavailable when every replica is overloaded. ``tenant``: the
        request's API key name (each one's share of the key table); ``model``: only the
        upstreams serving it (``None``: any)."""

    def connect_failed(self, upstream: Upstream) -> None:
        """``upstream`` refused a connection."""

    def shutting_down(self, upstream: Upstream) -> None:
        """``upstream`` answered that it is shutting down (:mod:`gateway.upstream_call`)."""


class RoutingMetrics(Protocol):
    """What the router records (:class:`gateway.metrics.GatewayMetrics` has them)."""

    @property
    def routing_decisions(self) -> Any: ...

    @property
    def routing_overloaded(self) -> Any: ...


class RoundRobinRouter:
    """The pool's round-robin order; nothing is marked down between probes (one NGINX
    refusing once must not take the whole gateway out)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def request_key(self, path: str, data: Mapping[str, Any]) -> int | None:
        return None

    def route(
        self, path: str, key: int | None, attempts: int, tenant: str = "", model: str | None = None
    ) -> Route:
        return Route(self.pool.candidates(attempts, model), ROUND_ROBIN)

    def connect_failed(self, upstream: Upstream) -> None:
        pass

    def shutting_down(self, upstream: Upstream) -> None:
        pass


class AwareRouter:
    def __init__(
        self,
        settings: RouterSettings,
        pool: UpstreamPool,
        scrapes: Mapping[str, Scrape],
        clock: Callable[[], float],
        metrics: RoutingMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.scrapes = scrapes
        self.clock = clock
        self.metrics = metrics
        self._rings: dict[tuple[str, ...], HashRing] = {}  # by members: one per model group
        self.keys = (
            KeyTable(settings.key_table_size, settings.key_idle_ttl, clock)
            if settings.key_table_size
            else None
        )
        self._turns: dict[str | None, int] = {}  # model -> its next turn among equals
        self._decisions: dict[str, Any] = {}

    def views(self, upstreams: list[Upstream]) -> dict[str, LoadView]:
        now, stale = self.clock(), self.settings.stale_after
        return {
            u.label: view(self.scrapes.get(u.label), u.in_flight, now, stale) for u in upstreams
        }

    def request_key(self, path: str, data: Mapping[str, Any]) -> int | None:
        """:func:`gateway.routing.affinity.prefix_key` with this router's settings."""
        settings = self.settings
        return prefix_key(
            data,
            path,
            prefix_chars=settings.prefix_chars,
            min_prefix_chars=settings.min_prefix_chars,
        )

    def route(
        self, path: str, key: int | None, attempts: int, tenant: str = "", model: str | None = None
    ) -> Route:
        if model is None:
            ready = [u for u in self.pool.upstreams if u.ready]
        else:
            ready = [u for u in self.pool.upstreams if u.ready and model in u.models]
        if not ready:
            return self._count(Route(self.pool.candidates(attempts, model), FALLBACK))
        views = self.views(ready)
        bound = self.settings.max_waiting
        over = {u.label for u in ready if _over(views[u.label], bound)}
        if len(over) == len(ready):
            self._refuse(len(ready), bound)
        settings = self.settings
        by_label = {u.label: u for u in ready}
        if key is None:
            order, reason = self._least_loaded(ready, views, model), LEAST_LOADED
        else:
            walk = self._ring_of(ready).walk(key)
            if self.keys is not None:
                home = self.keys.place(key, walk, tenant)
                walk = [home, *(label for label in walk if label != home)]
            index, labels = bounded_pick(
                walk, lambda label: views[label].load, settings.epsilon, settings.spill_margin
            )
            order = [by_label[label] for label in labels]
            reason = AFFINITY if index == 0 else LOAD_SPILL
        if over:
            order = [u for u in order if u.label not in over] + [
                u for u in order if u.label in over
            ]
        return self._count(Route([order[i % len(order)] for i in range(attempts)], reason))

    def connect_failed(self, upstream: Upstream) -> None:
        if upstream.ready:
            log.warning(
                "replica %s refused a connection: out until a probe finds it ready", upstream.label
            )
        self.pool.mark_down(upstream)

    def shutting_down(self, upstream: Upstream) -> None:
        if upstream.ready:
            log.warning(
                "replica %s is shutting down: out until a probe finds it ready", upstream.label
            )
        self.pool.mark_down(upstream)

    def _least_loaded(
        self, ready: list[Upstream], views: Mapping[str, LoadView], model: str | None
    ) -> list[Upstream]:
        turns = self._turns
        if len(turns) >= _MAX_TURNS and model not in turns:  # adapters came and went
            turns.clear()
        turn = turns.get(model, 0) % len(ready)
        turns[model] = turn + 1
        rotated = ready[turn:] + ready[:turn]  # equal scores: taken in turn (a stable sort)
        return sorted(rotated, key=lambda u: views[u.label].score)

    def _ring_of(self, ready: list[Upstream]) -> HashRing:
        """The ring over ``ready``, kept per member set: requests for two models (two
        groups) in turn must not rebuild a ring each."""
        labels = tuple(sorted(u.label for u in ready))
        ring = self._rings.get(labels)
        if ring is None:
            if len(self._rings) >= _MAX_RINGS:  # groups changed many times: start over
                self._rings.clear()
            ring = self._rings[labels] = HashRing(labels, self.settings.virtual_nodes)
        return ring

    def _refuse(self, count: int, bound: int | None) -> None:
        if self.metrics is not None:
            self.metrics.routing_overloaded.inc()
        raise UpstreamUnavailable(
            f"all {count} replicas have more than {bound} requests waiting; retry shortly",
            code=OVERLOADED_CODE,
            headers={"retry-after": str(OVERLOADED_RETRY_AFTER_S)},
        )

    def _count(self, route: Route) -> Route:
        if self.metrics is not None:
            child = self._decisions.get(route.reason)
            if child is None:
                child = self._decisions[route.reason] = self.metrics.routing_decisions.labels(
                    route.reason
                )
            child.inc()
        return route


def _over(load: LoadView, bound: int | None) -> bool:
    return bound is not None and load.waiting is not None and load.waiting > bound
