"""One request's exchange, top to bottom: the ASGI response a proxied route returns.

    admitted = await gate.admit(request, path, with_cap, started=clock())  # gateway.admission
    return Exchange(forwarder, admitted)

:meth:`Exchange.__call__` runs the request through, in this order:

1. :meth:`Forwarder.open_within <gateway.upstream_call.Forwarder.open_within>` -- the upstream
   call (hold, route, attempts and retries, first-byte timeout);
2. :meth:`Relay.answer <gateway.relay.Relay.answer>` -- the answer sent on to the client, under
   the idle and total timeouts and the client-write deadline (:class:`gateway.relay.WriteWatch`:
   the exchange's one timer, which also bounds 1's wait and starts the disconnect watch);
   meanwhile a task watches for the client going away (then: status 499, nothing more sent):
   from the start for a stream, from ``DISCONNECT_WATCH_AFTER_S`` on for a whole answer;
3. the upstream answer released (or aborted on any failure: vLLM then stops generating);
4. :func:`gateway.billing.settle` -- the lease settled with the tokens used, and the
   exchange's metrics.

Every proxied route takes this path; ``GET /v1/models`` as :class:`ModelListing`, an
exchange whose answer is the key's part of the upstreams' lists. What admission learned is the
:class:`gateway.admission.Admitted` record; what the exchange
produced is its :class:`Outcome`. Timeouts (``GatewaySettings.timeouts``): no response head
within ``first_byte`` (or by the ``total`` deadline) -> 504 envelope; during a stream, a gap
over ``idle`` or the ``total`` deadline -> an ``data: {"error": ...}`` event and
``data: [DONE]``. A client that takes no write within ``client_write``, or within a second
past the ``total`` deadline, is given up on: status 499 and ``client_write_timeouts``.
``total`` so bounds the whole request, from admission to the last write: the key's slot is
free by then (and that second). Every way,
the upstream connection is closed, so vLLM aborts, and the key is billed what the upstream
sent: what was relayed and, when the client left or stopped taking writes, what had come and
was not yet read (:meth:`Relay.meter_unread`; docs/gateway-server.md#a-client-that-leaves-a-stream).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import billing
from gateway.accounting import answer_labels
from gateway.admission import Admitted
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.event_meter import EventMeter
from gateway.relay import Relay, WriteWatch
from gateway.served_models import listing
from gateway.spill_settings import LOCAL
from gateway.upstream_call import Forwarder
from gateway.usage_meter import StreamMeter, Usage

log = logging.getLogger("vkit.gateway.exchange")

# How long a whole (non-stream) answer's exchange runs before a task starts watching for its
# client going away. Most answers are over before that, and pay no task for it (a task per
# request cost some 5% of the gateway's CPU per request: docs/gateway-cost.md#the-request-path);
# a client that left earlier is seen as soon as the watch starts (the server keeps the
# disconnect for the next receive), so the upstream is aborted at most this much later. A
# stream is watched from its start: its client often cuts it within this time (a fast model
# sends tens of tokens in 0.2 s), and vLLM must stop at the cut, not generate on.
DISCONNECT_WATCH_AFTER_S = 0.2


@dataclass(slots=True)
class Outcome:
    """What one exchange produced: the answer's status (499: the client left), the upstream
    that answered (and its backend: :mod:`gateway.spill`), the time spent waiting on
    upstreams, when the first byte went out, and the usage reported (``usage`` for a whole
    answer, ``meter`` for a stream)."""

    status: int = 0
    upstream: str = ""  # the label of the upstream that answered; "" if none did
    backend: str = LOCAL  # who it is billed to: local, or the spill-over endpoint's name
    upstream_wait: float = 0.0
    first_byte_at: float | None = None
    usage: Usage | None = None
    meter: StreamMeter | EventMeter | None = None


class Exchange(Response):
    """The ASGI response that performs one upstream exchange for an :class:`Admitted`
    request, recording what happened in its :class:`Outcome`."""

    metered = True  # counted in the in_flight gauge, billed, timed

    def __init__(self, forwarder: Forwarder, admitted: Admitted) -> None:
        # Not Response.__init__: there is no body yet; FastAPI only needs these attributes.
        self.status_code = 200
        self.background = None
        self.forwarder = forwarder
        self.admitted = admitted
        self.outcome = Outcome()
        self._client_gone = False
        self._watcher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = asyncio.current_task()
        assert owner is not None
        forwarder, outcome, admitted = self.forwarder, self.outcome, self.admitted
        timeouts = forwarder.timeouts
        total_left = admitted.started + timeouts.total - forwarder.clock()
        stream = admitted.stream
        # A cut stream must stop vLLM at the cut: watched from the start. A whole answer's
        # watch is started by the write watch's one timer, if the exchange lasts that long.
        watch = WriteWatch(
            owner,
            timeouts.client_write,
            total_left,
            math.inf if stream else DISCONNECT_WATCH_AFTER_S,
            None if stream else lambda: self._start_watching(receive, owner, relay),
        )
        relay = Relay(send, watch, forwarder, admitted, outcome)
        if stream:
            self._start_watching(receive, owner, relay)
        metrics = forwarder.metrics
        if self.metered:
            metrics.in_flight.inc()
        try:
            await self._run(relay)
        except asyncio.CancelledError:
            if watch.gave_up:
                # Abandoned half-way (the upstream closed by _run): the server closes the
                # client connection (uvicorn: "returned without completing response").
                metrics.client_write_timeouts.inc()
                log.warning(
                    "the client of key %s took no write in time (%s deadline): answer abandoned",
                    admitted.key_name,
                    watch.gave_up,
                )
            elif not self._client_gone:
                raise
            owner.uncancel()
            outcome.status = 499
        finally:
            watch.close()  # its timer, and the call that would start the watch (a cycle)
            if self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None  # the task's frame holds this exchange: no cycle left
            if outcome.status:  # 499 when the client left, whatever was sent before
                answer_labels(scope).status = outcome.status
            await self._settle()

    async def _settle(self) -> None:
        """Bill the request and record the exchange's metrics (once the answer is over)."""
        metrics = self.forwarder.metrics
        metrics.in_flight.dec()
        await billing.settle(self.admitted, self.outcome, metrics, self.forwarder.ledger)
        self._record_timings()

    def _start_watching(self, receive: Receive, owner: asyncio.Task[Any], relay: Relay) -> None:
        self._watcher = asyncio.create_task(self._watch_disconnect(receive, owner, relay))

    async def _watch_disconnect(
        self, receive: Receive, owner: asyncio.Task[Any], relay: Relay
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not relay.finishing and not owner.cancelling():
                    self._client_gone = True
                    owner.cancel()
                return

    async def _run(self, relay: Relay) -> None:
        forwarder, admitted, outcome = self.forwarder, self.admitted, self.outcome
        deadline = admitted.started + forwarder.timeouts.total
        began = forwarder.clock()
        try:
            try:
                upstream, response = await forwarder.open_within(
                    deadline,
                    admitted.method,
                    admitted.path,
                    admitted.body,
                    admitted.route_key,
                    admitted.key_name,
                    admitted.route_model,
                    admitted.priority,
                    waits=relay.watch,
                )
            finally:
                outcome.upstream_wait += forwarder.clock() - began
        except GatewayError as exc:
            await relay.error(exc)
            return
        outcome.upstream = upstream.label
        outcome.backend = upstream.backend
        try:
            await relay.answer(response, deadline)
        except BaseException:
            try:
                if self._client_gone or relay.watch.gave_up:
                    relay.meter_unread(response)
            finally:
                response.abort()  # whatever metering did: vLLM must stop
            raise
        response.release()

    def _record_timings(self) -> None:
        # The answer's count and duration are gateway.accounting's; these only the exchange knows.
        admitted, outcome, forwarder = self.admitted, self.outcome, self.forwarder
        now = forwarder.clock()
        first = outcome.first_byte_at
        forwarder.metrics.exchange_done(
            model=admitted.model,
            time_to_first_byte=None if first is None else first - admitted.started,
            overhead=now - admitted.started - outcome.upstream_wait,
        )


class ModelListing(Exchange):
    """``GET /v1/models`` through the same exchange: the union of what every upstream of
    the pool lists (base models and LoRA adapters with their ``parent``, as the prober last
    read them: :mod:`gateway.served_models`), only the key's models
    (``Admitted.allowed_models``) when it names any. No upstream is asked: the list is the
    one the router routes by. While no upstream is ready the request is held, or refused
    with a 503, as any other. Not metered: the lease is settled with 0."""

    metered = False

    async def _run(self, relay: Relay) -> None:
        forwarder = self.forwarder
        pool = forwarder.pool
        try:
            if forwarder.hold is not None:
                await forwarder.hold.until_ready()
            elif pool.none_can_serve:
                raise UpstreamUnavailable("no upstream is ready; retry shortly")
        except GatewayError as exc:
            await relay.error(exc)
            return
        served = sorted(pool.upstreams, key=lambda u: not u.ready)  # ready ones' cards first
        body = listing((u.served for u in served), self.admitted.allowed_models)
        await relay.whole(200, b"application/json", _json_bytes(body))

    async def _settle(self) -> None:
        try:
            await self.admitted.lease.settle(0)
        except Exception:  # the answer is out; a failed settle must not turn it into a 500
            log.exception("settling the lease of key %s failed", self.admitted.key_name)


def _json_bytes(content: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
