"""Holding requests while no upstream is ready (scale to zero, every replica restarting).

Per model: a request waits while no upstream serving its ``model`` is ready, whatever the
other models' replicas do (:meth:`gateway.upstreams.UpstreamPool.cannot_serve`).

With ``hold.max_wait`` set (:class:`gateway.settings.HoldSettings`), a request that finds
every upstream probed and none ready waits -- at most ``max_queued`` at a time, each at most
``max_wait`` seconds -- for the prober to find one ready (it probes every
``hold.probe_interval`` s while requests wait), and then goes on as any other. Past the
queue bound or the deadline: 503 + ``Retry-After`` (codes :data:`QUEUE_FULL`,
:data:`DEADLINE`), counted in ``vkit_gateway_hold_refused_total{reason}``. Without
``max_wait`` such a request is refused at once, as before. The held count is
``vkit_gateway_held_requests``: a scale-from-zero signal.

The requests an upstream's readiness wakes together go on in their key's class order
(``priority``, lower first, as vLLM's: :mod:`gateway.priority_class`), first come first
served within a class: each one woken takes a turn, and the turns are given out once all of
them have taken theirs (the next pass of the event loop), interactive ones first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import RETRY_AFTER_S, UpstreamUnavailable
from gateway.settings import HoldSettings
from gateway.upstreams import UpstreamPool

QUEUE_FULL = "hold_queue_full"
DEADLINE = "hold_timeout"


class HoldMetrics(Protocol):
    @property
    def held_requests(self) -> Any: ...

    @property
    def hold_seconds(self) -> Any: ...

    @property
    def hold_refused(self) -> Any: ...


class Hold:
    def __init__(
        self,
        settings: HoldSettings,
        pool: UpstreamPool,
        metrics: HoldMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        self._arrivals = itertools.count()  # first come, first served within a class
        self._turns: list[tuple[int, int, asyncio.Future[None]]] = []

    async def until_ready(self, model: str | None = None, priority: int = 0) -> None:
        """Return once an upstream serving ``model`` (``None``: any) may serve; raise
        UpstreamUnavailable if none will in time. Requests woken together return in
        ``priority`` order (lower first), then in their order of arrival."""
        pool = self.pool
        if not pool.cannot_serve(model):
            return
        max_wait = self.settings.max_wait
        if max_wait is None:
            raise UpstreamUnavailable(none_ready(model))
        if pool.waiting >= self.settings.max_queued:
            self.metrics.hold_refused.labels("queue_full").inc()
            raise UpstreamUnavailable(
                f"no upstream is ready and {pool.waiting} requests already wait for one; "
                "retry shortly",
                code=QUEUE_FULL,
            )
        arrival = next(self._arrivals)
        began = self.clock()
        self.metrics.held_requests.inc()
        try:
            ready = await pool.wait_ready(max_wait, model)
        finally:
            self.metrics.held_requests.dec()
            self.metrics.hold_seconds.observe(self.clock() - began)
        if not ready:
            self.metrics.hold_refused.labels("deadline").inc()
            serving = "" if model is None else f" serving model '{model}'"
            raise UpstreamUnavailable(
                f"no upstream{serving} became ready within {max_wait:g} s; retry shortly",
                code=DEADLINE,
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
        await self._take_turn(priority, arrival)

    async def _take_turn(self, priority: int, arrival: int) -> None:
        """Wait for this request's turn among those woken with it (module docstring)."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        if not self._turns:
            loop.call_soon(self._give_turns)  # after every request woken now took a turn
        heapq.heappush(self._turns, (priority, arrival, turn))
        await turn

    def _give_turns(self) -> None:
        turns = self._turns
        while turns:
            _, _, turn = heapq.heappop(turns)
            if not turn.done():  # its request may have been cancelled meanwhile
                turn.set_result(None)


def none_ready(model: str | None) -> str:
    """The 503's message when no upstream (serving ``model``) is ready."""
    if model is None:
        return "no upstream is ready; retry shortly"
    return f"no upstream serving model '{model}' is ready; retry shortly"
