"""The relay: one upstream answer sent on to the client, under the layered timeouts.

A stream (a 200 to a ``stream`` request) is passed on event by event through a
:class:`gateway.usage_meter.StreamMeter`, which reads the usage and strips what the
client did not ask for; during it, a gap over ``timeouts.idle``, the ``total``
deadline, or an upstream that ends the stream before ``data: [DONE]`` (cleanly, but
with an event torn or the last ones missing: a cut answer, which the OpenAI SDK would
take for a whole one: docs/gateway-server.md#a-stream-that-ends-early) ends the stream
with a ``data: {"error": ...}`` event and ``data: [DONE]`` (what vLLM itself sends for
an error after the stream began); the torn half of an event is never relayed. The
deadline is checked before every read, not only when a read has to wait: an upstream
that always has the next chunk ready never waits. The stream's last event goes out with
the answer's end (one write); the upstream's end after it is then read only to keep its
connection. Any other answer is read whole (within the same bounds, else a 504 or 502
envelope), its usage read, an upstream error body put in the OpenAI envelope, and a 401
of the upstream (our key refused, not the client's) answered 502. The reads' bounds (and
the response head's: :meth:`Forwarder.open_within`) are the exchange's :class:`WriteWatch`,
a :class:`gateway.deadline.WaitDeadline`: each wait only moves its deadline.

Every write is under the client-write deadline (:meth:`Relay.deliver`, or its body inline
for a stream's chunks): a client that takes no write within ``timeouts.client_write`` (it
stopped reading, its socket open) is given up on, and so is one that takes none within
``WRITE_GRACE_S`` (1 s) past the ``total`` deadline (the grace lets the closing error event
out to a client that reads). The server's ``send`` waits while the socket's write buffer is
full (uvicorn's flow control), so a write that waits is where such a client shows.
:class:`WriteWatch` is one timer per exchange, re-armed only when it fires, not one per write:
an ``asyncio.timeout`` around each send cost ~5 us of CPU here, some 10% of a 16-chunk
stream's whole cost. The same timer bounds the upstream waits and starts a whole answer's
disconnect watch (:mod:`gateway.exchange`): one timer armed per exchange, not three. The
exchange answers 499 and counts ``client_write_timeouts`` when the watch has ``gave_up``.

The agent APIs' streams (``Admitted.api``) are metered by their events instead
(:class:`gateway.event_meter.EventMeter`), end with their own last event rather than
``[DONE]``, and a stream the gateway cuts ends with an ``event: error`` in the route's
envelope; their error answers take that envelope too (:mod:`gateway.agent_apis`).

What the answer produced (status, timings, usage) is written to the exchange's
:class:`gateway.exchange.Outcome`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Send

from gateway.client import UpstreamBroken, UpstreamResponse
from gateway.deadline import WaitDeadline
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, normalise_upstream_error
from gateway.event_meter import EventMeter
from gateway.upstream_call import Forwarder
from gateway.usage_meter import StreamMeter, usage_from_json

if TYPE_CHECKING:
    from gateway.admission import Admitted
    from gateway.exchange import Outcome

_JSON = b"application/json"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# Past the total deadline, the longest one write may wait: time for the write under way and
# the stream's closing error event to go out to a client that reads, not to a stalled one.
WRITE_GRACE_S = 1.0


class WriteWatch(WaitDeadline):
    """The exchange's one timer. It cancels ``owner`` once a write to the client has waited
    ``limit`` seconds, or, from the request's total deadline (``total_left`` seconds from
    now) on, ``WRITE_GRACE_S`` (when shorter); ``gave_up`` then names the deadline:
    ``"client_write"`` or ``"total"``. As a :class:`~gateway.deadline.WaitDeadline` it also
    bounds the exchange's waits on the upstream (the head's, then the reads'), and it calls
    ``then_watch`` once ``watch_after`` seconds have passed (the exchange's disconnect watch
    of a whole answer). One timer serves all three: armed at construction at the earliest
    moment any of them can be due, moved earlier only by a wait that is due sooner, and
    otherwise re-armed only when it fires."""

    __slots__ = ("_deadline", "_limit", "_then_watch", "_watch_at", "gave_up", "since")

    def __init__(
        self,
        owner: asyncio.Task[Any],
        limit: float,
        total_left: float = math.inf,
        watch_after: float = math.inf,
        then_watch: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(owner, asyncio.get_running_loop())
        self.since: float | None = None  # loop time at which the write in progress began
        self.gave_up = ""
        self._limit = limit
        now = self.loop.time()
        self._deadline = now + total_left
        self._then_watch = then_watch
        self._watch_at = now + watch_after if then_watch is not None else math.inf
        at = self._armed = min(now + limit, self._deadline, self._watch_at)
        self._handle = self.loop.call_at(at, self._fire)

    def close(self) -> None:
        """The exchange is over: the timer goes, and with it what it would have called."""
        super().close()
        self._then_watch = None

    def _fire(self) -> None:
        self._handle = None
        owner = self._owner
        if owner.cancelling() > self._base:  # ending already (the client went away)
            return
        now = self.loop.time()
        # The write in progress, if any: the next one cannot be due before now + limit.
        deadline, since = self._deadline, self.since
        past = now >= deadline - 0.001
        limit = min(self._limit, WRITE_GRACE_S) if past else self._limit
        if since is not None and now - since >= limit - 0.001:
            self.gave_up = "total" if past else "client_write"
            owner.cancel()
            return
        at = (now if since is None else since) + limit
        if not past and deadline < at:
            at = deadline
        # The disconnect watch, once it is time.
        if self._watch_at <= self._armed:
            then_watch, self._then_watch = self._then_watch, None
            self._watch_at = math.inf
            if then_watch is not None:
                then_watch()
        elif self._watch_at < at:
            at = self._watch_at
        # The upstream wait in progress, if any.
        due = self._at
        if due is not None:
            if due <= self._armed:
                self._at = None
                self.tripped = True
                owner.cancel()
            elif due < at:
                at = due
        self._armed = at
        self._handle = self.loop.call_at(at, self._fire)


class Relay:
    """Sends one exchange's answer to the client through ``send``. ``finishing`` is set once
    the last message is on its way (a disconnect then is no longer the client leaving).
    ``watch`` bounds its writes and the exchange's waits on the upstream (the head's, then the
    reads')."""

    __slots__ = (
        "_admitted",
        "_forwarder",
        "_outcome",
        "_send",
        "finishing",
        "watch",
    )

    def __init__(
        self,
        send: Send,
        watch: WriteWatch,
        forwarder: Forwarder,
        admitted: Admitted,
        outcome: Outcome,
    ) -> None:
        self._send = send
        self.watch = watch
        self._forwarder = forwarder
        self._admitted = admitted
        self._outcome = outcome
        self.finishing = False

    async def answer(self, response: UpstreamResponse, deadline: float) -> None:
        """Relay ``response``: as a stream when the request asked for one and got a 200."""
        if self._admitted.stream and response.status == 200:
            await self._stream(response, deadline)
        else:
            await self._body(response, deadline)

    async def _body(self, response: UpstreamResponse, deadline: float) -> None:
        forwarder, outcome = self._forwarder, self._outcome
        waits, began = self.watch, forwarder.clock()
        waits.begin(max(min(forwarder.timeouts.idle, deadline - began), 0.001))
        kind = ""
        try:
            body = await response.read()
        except UpstreamBroken:
            kind = "stream"
        except asyncio.CancelledError:
            if not waits.timed_out():
                raise
            kind = "timeout"
        finally:
            waits.end()
            outcome.upstream_wait += forwarder.clock() - began
        if kind:
            response.abort()
            forwarder.metrics.upstream_errors.labels(outcome.upstream, kind).inc()
            error_class = UpstreamTimeout if kind == "timeout" else UpstreamError
            await self.error(error_class(f"the upstream answer broke off ({kind})"))
            return
        status = response.status
        if status == 200:
            outcome.usage = usage_from_json(body)
        elif status == 401:
            # The upstream refused *our* key: the client's key was fine.
            await self.error(UpstreamError("the upstream refused the gateway's credentials"))
            return
        elif status >= 400:
            api = self._admitted.api
            normalise = normalise_upstream_error if api is None else api.upstream_error
            body = normalise(status, body) or body
        content_type = response.content_type.encode() if status == 200 else _JSON
        await self.whole(status, content_type, body)

    async def _stream(self, response: UpstreamResponse, deadline: float) -> None:
        forwarder, admitted, outcome = self._forwarder, self._admitted, self._outcome
        clock, idle = forwarder.clock, forwarder.timeouts.idle
        api = admitted.api
        meter: StreamMeter | EventMeter
        if api is None:
            meter = StreamMeter(
                keep_usage=admitted.include_usage,
                keep_chunk_usage=admitted.include_chunk_usage,
                choices_per_prompt=admitted.choices,
            )
        else:
            meter = api.meter()
        outcome.meter = meter
        outcome.status = 200
        headers = _SSE_HEADERS + admitted.lease.raw_headers
        await self.deliver({"type": "http.response.start", "status": 200, "headers": headers})
        chunks = response.chunks()
        error: GatewayError | None = None
        ended = False  # the client's answer went out whole, with the stream's last event
        watch = self.watch  # each read under the idle and total bounds, one timer for all
        begin, end_wait, timed_out = watch.begin, watch.end, watch.timed_out
        send, loop_time, feed = self._send, watch.loop.time, meter.feed
        while True:
            began = clock()
            if began >= deadline:  # also here: a read that need not wait never times out
                error = UpstreamTimeout("the request passed its total deadline")
                break
            limit = deadline - began  # max(min(idle, this), 0.001), without two calls a read
            if idle < limit:
                limit = idle
            begin(limit if limit > 0.001 else 0.001)
            try:
                chunk = await anext(chunks, b"")
            except UpstreamBroken:
                error = UpstreamError("the upstream connection broke during the stream")
            except asyncio.CancelledError:
                if not timed_out():
                    raise
                error = UpstreamTimeout(
                    f"the stream stalled (no chunk in {idle:g} s, or over total)"
                )
            finally:
                end_wait()
                outcome.upstream_wait += clock() - began
            if error is not None:
                break
            if ended:  # the upstream's end after its last event; more: not kept
                if chunk:
                    response.abort()
                break
            if not chunk:  # a clean end; before [DONE] it is a cut answer
                if not meter.done:
                    last = "data: [DONE]" if api is None else "its last event"
                    error = UpstreamError(f"the upstream ended the stream before {last}")
                break
            out = feed(chunk)
            if out and outcome.first_byte_at is None:
                outcome.first_byte_at = clock()
            if meter.done:  # the last event: sent with the answer's end, one write
                ended = self.finishing = True
                end = out + meter.flush()
                await self.deliver({"type": "http.response.body", "body": end, "more_body": False})
            elif out:  # as deliver does, here without a coroutine of its own per chunk
                watch.since = loop_time()
                try:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                finally:
                    watch.since = None
        if ended:  # the client's answer is whole; the upstream's end is only read to keep it
            if error is not None:
                response.abort()
            return
        tail = meter.flush()
        if error is not None:
            response.abort()
            kind = "timeout" if isinstance(error, UpstreamTimeout) else "stream"
            forwarder.metrics.upstream_errors.labels(outcome.upstream, kind).inc()
            tail = _error_event(error) if api is None else api.error_event(error)
        self.finishing = True
        await self.deliver({"type": "http.response.body", "body": tail, "more_body": False})

    def meter_unread(self, response: UpstreamResponse) -> None:
        """Meter what the upstream sent of a stream and the client will not get: the
        chunks already in its connection when the client left (vLLM generated them)."""
        meter = self._outcome.meter
        if meter is not None:
            data = response.unread()
            if data:
                meter.feed(data)

    async def whole(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Send a whole answer: its head (with the lease's headers) and body."""
        outcome = self._outcome
        outcome.status = status
        self.finishing = True
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        headers += self._admitted.lease.raw_headers
        headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        await self.deliver({"type": "http.response.start", "status": status, "headers": headers})
        if outcome.first_byte_at is None:
            outcome.first_byte_at = self._forwarder.clock()
        await self.deliver({"type": "http.response.body", "body": body, "more_body": False})

    async def error(self, exc: GatewayError) -> None:
        """Answer ``exc`` in the route's envelope (OpenAI's; Anthropic's on /v1/messages)."""
        api = self._admitted.api
        body = exc.body() if api is None else api.error_body(exc)
        await self.whole(exc.status_code, _JSON, body, exc.headers)

    async def deliver(self, message: Message) -> None:
        """``send`` under the write watch (:class:`WriteWatch`)."""
        watch = self.watch
        watch.since = watch.loop.time()
        try:
            await self._send(message)
        finally:
            watch.since = None


def _error_event(error: GatewayError) -> bytes:
    """What vLLM itself sends for an error after the stream began."""
    return b"data: " + error.body() + b"\n\ndata: [DONE]\n\n"
