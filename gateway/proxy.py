"""Forwarding one admitted request upstream and relaying the answer.

:class:`Exchange` is an ASGI response: it opens the upstream (retrying on the next upstream
with tenacity what no upstream can have started, see below), relays the body, applies the
layered timeouts, watches for the client going away, and in every case closes or releases
the upstream connection, settles the limiter lease with the tokens really used and records
the metrics.

Retries never multiply generations. An attempt is made again, on the next upstream, only
when the upstream cannot have started the request: the connection was never made, it
answered 503 (vLLM refuses; NGINX passes a replica's 503 on without retrying a POST), or
its answer was not HTTP at all (no vLLM answers so). Once it may have started -- the
connection closed or reset after the request went out, a 502 (behind NGINX: a replica
that dropped the request), a timeout -- the client gets the error and nothing is resent.
NGINX keeps to the same rule (``nginx/vkit.conf.template``: no ``non_idempotent``), so
the two layers together send a POST to at most one replica that may run it.

Timeouts (``GatewaySettings.timeouts``): no response head within ``first_byte`` (or ``total``)
-> 504 envelope; during a stream, a gap over ``idle`` or the ``total`` deadline -> an
``data: {"error": ...}`` event and ``data: [DONE]``. A client that takes no write within
``client_write`` (it stopped reading, its socket open) is given up on: status 499 and
``client_write_timeouts``. Every way, the upstream connection is closed, so vLLM aborts
(REFERENCE section 4), and the key is billed what was relayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from gateway.accounting import answer_labels
from gateway.admission import Admitted
from gateway.client import (
    UpstreamBadResponse,
    UpstreamBroken,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDropped,
    UpstreamResponse,
    read_and_release,
)
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    normalise_upstream_error,
)
from gateway.metrics import GatewayMetrics
from gateway.relay import StreamMeter, Usage, usage_from_json
from gateway.routing import Hold, InFlightResponse, Router, sending
from gateway.settings import RetrySettings, TimeoutSettings
from gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger("vkit.gateway.proxy")

_ERROR_STATUSES = frozenset({502, 503})  # counted as upstream errors; only 503 is retried
_JSON = b"application/json"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Retryable(Exception):
    """An attempt the upstream cannot have started: the next upstream may be tried.
    ``error`` is the answer when it was the last, unless the upstream answered (503)."""

    def __init__(
        self,
        upstream: Upstream,
        response: UpstreamResponse | None,
        body: bytes,
        error: GatewayError,
    ) -> None:
        self.upstream = upstream
        self.response = response
        self.body = body
        self.error = error


class _WriteWatch:
    """Cancels ``owner`` once a write to the client has waited ``limit`` seconds.

    One timer per exchange, re-armed only when it fires, not one per write: an
    ``asyncio.timeout`` around each send cost ~5 us of CPU here, some 10% of a 16-chunk
    stream's whole cost (REFERENCE section 6). :meth:`Exchange._deliver` sets ``since``.
    """

    __slots__ = ("_handle", "_limit", "_owner", "loop", "since", "tripped")

    def __init__(self, owner: asyncio.Task[Any], limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None  # loop time at which the write in progress began
        self.tripped = False
        self._owner = owner
        self._limit = limit
        self._handle = self.loop.call_later(limit, self._check)

    def _check(self) -> None:
        if self._owner.cancelling():  # ending already (the client went away)
            return
        now, since = self.loop.time(), self.since
        if since is not None and now - since >= self._limit - 0.001:
            self.tripped = True
            self._owner.cancel()
            return
        self._handle = self.loop.call_at(
            (now if since is None else since) + self._limit, self._check
        )

    def cancel(self) -> None:
        self._handle.cancel()


@dataclass(slots=True)
class Outcome:
    """What one exchange produced: the answer's status, timings and the usage it reported."""

    status: int = 0
    upstream_wait: float = 0.0
    first_byte_at: float | None = None
    usage: Usage | None = None


def upstream_headers(api_key: str | None) -> dict[str, str]:
    """Headers on every forwarded request: JSON, and vLLM's ``--api-key`` when it has one."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarder:
    """What every exchange shares: the retry and timeout settings, the headers sent upstream,
    the upstream pool, the router that orders it for each request
    (:mod:`gateway.routing`), the holding of requests while no upstream is ready, the
    client, the metrics and the clock."""

    retry: RetrySettings
    timeouts: TimeoutSettings
    upstream_headers: dict[str, str]
    pool: UpstreamPool
    router: Router
    client: UpstreamClient
    metrics: GatewayMetrics
    clock: Callable[[], float]
    hold: Hold | None = None  # None: no upstream ready -> 503 at once

    async def open_within(
        self, limit: float, method: str, path: str, body: bytes | None
    ) -> tuple[Upstream, UpstreamResponse]:
        """:meth:`open`, but no response head within ``limit`` seconds is a 504. A request
        that finds no upstream ready is first held (``hold``), outside ``limit``."""
        if self.hold is not None:
            await self.hold.until_ready()
        try:
            async with asyncio.timeout(limit):
                return await self.open(method, path, body)
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream sent nothing within {limit:g} s") from None

    async def open(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[Upstream, UpstreamResponse]:
        """The first upstream answer of an attempt that need not be retried.

        Raises UpstreamUnavailable (503, Retry-After) at once when every upstream has been
        probed and none is ready, and when the last attempt failed to connect; UpstreamError
        when its answer was not HTTP or the connection dropped after sending (never retried);
        when the last attempt answered 503, that answer (already read) is returned.
        """
        retry = self.retry
        if self.pool.none_can_serve:
            raise UpstreamUnavailable("no upstream is ready; retry shortly")
        candidates = self.router.route(path, body, retry.attempts).candidates
        try:  # the common case without tenacity's per-call cost (~30 us)
            return candidates[0], await self._try(candidates[0], method, path, body)
        except _Retryable as exc:
            failure = exc
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(retry.attempts),
                wait=wait_exponential(multiplier=retry.backoff_initial, max=retry.backoff_max),
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    number = attempt.retry_state.attempt_number
                    if number == 1:
                        raise failure  # the first try above: tenacity backs off, tries the next
                    upstream = candidates[number - 1]
                    return upstream, await self._try(upstream, method, path, body)
        except _Retryable as exc:
            failure = exc
        if failure.response is None:
            raise failure.error
        status, content_type = failure.response.status, failure.response.content_type
        return failure.upstream, _BufferedResponse(status, content_type, failure.body)

    async def _try(
        self, upstream: Upstream, method: str, path: str, body: bytes | None
    ) -> UpstreamResponse:
        try:
            with sending(upstream):  # the in-flight count, given back by the response
                sent = await self.client.send(
                    method, upstream.url + path, self.upstream_headers, body
                )
        except UpstreamConnectError:
            self.router.connect_failed(upstream)
            self._count_error(upstream, "connect")
            error: GatewayError = UpstreamUnavailable("no upstream could be reached")
            raise _Retryable(upstream, None, b"", error) from None
        except UpstreamBadResponse:
            self._count_error(upstream, "protocol")
            error = UpstreamError("the upstream's answer was not a valid HTTP response")
            raise _Retryable(upstream, None, b"", error) from None
        except UpstreamDropped:  # it read the request and may be generating: not resent
            self._count_error(upstream, "dropped")
            raise UpstreamError("the upstream closed the connection without answering") from None
        response = InFlightResponse(sent, upstream)
        if response.status in _ERROR_STATUSES:
            self._count_error(upstream, "status")
            if response.status == 503:
                body = await read_and_release(response)
                raise _Retryable(
                    upstream, response, body, UpstreamUnavailable("the upstream answered 503")
                )
        return response

    def _count_error(self, upstream: Upstream, kind: str) -> None:
        self.metrics.upstream_errors.labels(upstream.label, kind).inc()


class _BufferedResponse:
    """An upstream answer already read in full (the last 503 after retries)."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Exchange(Response):
    """The ASGI response that performs one upstream exchange for an :class:`Admitted`
    request, recording what happened in its :class:`Outcome`."""

    def __init__(self, forwarder: Forwarder, admitted: Admitted) -> None:
        # Not Response.__init__: there is no body yet; FastAPI only needs these attributes.
        self.status_code = 200
        self.background = None
        self.forwarder = forwarder
        self.admitted = admitted
        self.outcome = Outcome()
        self._finishing = False
        self._client_gone = False
        self._meter: StreamMeter | None = None
        self._upstream_label = ""
        self._write_watch: _WriteWatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = asyncio.current_task()
        assert owner is not None
        watcher = asyncio.create_task(self._watch_disconnect(receive, owner))
        watch = self._write_watch = _WriteWatch(owner, self.forwarder.timeouts.client_write)
        metrics = self.forwarder.metrics
        metrics.in_flight.inc()
        try:
            await self._run(send)
        except asyncio.CancelledError:
            if watch.tripped:
                # Abandoned half-way (the upstream closed by _run): the server closes the
                # client connection (uvicorn: "returned without completing response").
                metrics.client_write_timeouts.inc()
                log.warning(
                    "the client of key %s took no write in %g s: answer abandoned",
                    self.admitted.key_name,
                    self.forwarder.timeouts.client_write,
                )
            elif not self._client_gone:
                raise
            owner.uncancel()
            self.outcome.status = 499
        finally:
            watch.cancel()
            watcher.cancel()
            metrics.in_flight.dec()
            if self.outcome.status:  # 499 when the client left, whatever was sent before
                answer_labels(scope).status = self.outcome.status
            await self._account()

    async def _watch_disconnect(self, receive: Receive, owner: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finishing and not owner.cancelling():
                    self._client_gone = True
                    owner.cancel()
                return

    async def _run(self, send: Send) -> None:
        admitted = self.admitted
        timeouts = self.forwarder.timeouts
        deadline = admitted.started + timeouts.total
        try:
            upstream, response = await self._open(min(timeouts.first_byte, timeouts.total))
        except GatewayError as exc:
            await self._send_error(send, exc)
            return
        self._upstream_label = upstream.label
        try:
            if admitted.stream and response.status == 200:
                await self._relay_stream(send, response, deadline)
            else:
                await self._relay_body(send, response, deadline)
        except BaseException:
            response.abort()
            raise
        response.release()

    async def _open(self, limit: float) -> tuple[Upstream, UpstreamResponse]:
        forwarder = self.forwarder
        began = forwarder.clock()
        try:
            return await forwarder.open_within(
                limit, "POST", self.admitted.path, self.admitted.body
            )
        finally:
            self.outcome.upstream_wait += forwarder.clock() - began

    async def _relay_body(self, send: Send, response: UpstreamResponse, deadline: float) -> None:
        forwarder = self.forwarder
        began = forwarder.clock()
        limit = min(forwarder.timeouts.idle, deadline - began)
        try:
            async with asyncio.timeout(max(limit, 0.001)):
                body = await response.read()
        except (TimeoutError, UpstreamBroken) as exc:
            response.abort()
            kind = "timeout" if isinstance(exc, TimeoutError) else "stream"
            forwarder.metrics.upstream_errors.labels(self._upstream_label, kind).inc()
            error_class = UpstreamTimeout if kind == "timeout" else UpstreamError
            await self._send_error(send, error_class(f"the upstream answer broke off ({kind})"))
            return
        finally:
            self.outcome.upstream_wait += forwarder.clock() - began
        status = response.status
        if status == 200:
            self.outcome.usage = usage_from_json(body)
        elif status == 401:
            # The upstream refused *our* key: the client's key was fine.
            refused = UpstreamError("the upstream refused the gateway's credentials")
            await self._send_error(send, refused)
            return
        elif status >= 400:
            body = normalise_upstream_error(status, body) or body
        content_type = response.content_type.encode() if status == 200 else _JSON
        await self._send_whole(send, status, content_type, body)

    async def _relay_stream(self, send: Send, response: UpstreamResponse, deadline: float) -> None:
        forwarder = self.forwarder
        clock = forwarder.clock
        idle = forwarder.timeouts.idle
        admitted = self.admitted
        meter = self._meter = StreamMeter(
            keep_usage=admitted.include_usage,
            keep_chunk_usage=admitted.include_chunk_usage,
            choices_per_prompt=admitted.choices,
        )
        self.outcome.status = 200
        headers = _SSE_HEADERS + self.admitted.headers
        await self._deliver(
            send, {"type": "http.response.start", "status": 200, "headers": headers}
        )
        chunks = response.chunks()
        error: GatewayError | None = None
        while True:
            began = clock()
            try:
                async with asyncio.timeout(max(min(idle, deadline - began), 0.001)):
                    chunk = await anext(chunks, b"")
            except TimeoutError:
                error = UpstreamTimeout(
                    f"the stream stalled (no chunk in {idle:g} s, or over total)"
                )
            except UpstreamBroken:
                error = UpstreamError("the upstream connection broke during the stream")
            finally:
                self.outcome.upstream_wait += clock() - began
            if error is not None or not chunk:
                break
            out = meter.feed(chunk)
            if out:
                if self.outcome.first_byte_at is None:
                    self.outcome.first_byte_at = clock()
                await self._deliver(
                    send, {"type": "http.response.body", "body": out, "more_body": True}
                )
        tail = meter.flush()
        if error is not None:
            response.abort()
            kind = "timeout" if isinstance(error, UpstreamTimeout) else "stream"
            self.forwarder.metrics.upstream_errors.labels(self._upstream_label, kind).inc()
            tail = _error_event(error)
        self._finishing = True
        await self._deliver(send, {"type": "http.response.body", "body": tail, "more_body": False})

    async def _send_whole(
        self,
        send: Send,
        status: int,
        content_type: bytes,
        body: bytes,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.outcome.status = status
        self._finishing = True
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        headers += self.admitted.headers
        headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        await self._deliver(
            send, {"type": "http.response.start", "status": status, "headers": headers}
        )
        if self.outcome.first_byte_at is None:
            self.outcome.first_byte_at = self.forwarder.clock()
        await self._deliver(send, {"type": "http.response.body", "body": body, "more_body": False})

    async def _deliver(self, send: Send, message: Message) -> None:
        """``send`` under the write watch: the server's ``send`` waits while the socket's
        write buffer is full (uvicorn's flow control), so this is where a client that stopped
        reading shows, and after ``timeouts.client_write`` the exchange is given up."""
        watch = self._write_watch
        assert watch is not None
        watch.since = watch.loop.time()
        try:
            await send(message)
        finally:
            watch.since = None

    async def _send_error(self, send: Send, exc: GatewayError) -> None:
        await self._send_whole(send, exc.status_code, _JSON, exc.body(), exc.headers)

    async def _account(self) -> None:
        admitted, outcome = self.admitted, self.outcome
        forwarder = self.forwarder
        metrics = forwarder.metrics
        prompt, completion = self._used_tokens()
        try:
            await admitted.settle(prompt + completion)
        except Exception:  # the answer is out; a failed settle must not turn it into a 500
            log.exception("settling the lease of key %s failed", admitted.key_name)
        metrics.count_tokens(admitted.key_name, prompt, completion)
        now = forwarder.clock()
        first = outcome.first_byte_at
        # The answer's count and duration are gateway.accounting's; these only the exchange knows.
        metrics.exchange_done(
            model=admitted.model,
            time_to_first_byte=None if first is None else first - admitted.started,
            overhead=now - admitted.started - outcome.upstream_wait,
        )

    def _used_tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens to bill: the upstream's usage when it reported any
        (for a cut stream, its per-chunk usage up to the last chunk). An answer that
        carried no usage bills the whole reservation and counts in ``usage_missing``; a
        stream cut before any usage came, the estimate and the content events relayed."""
        admitted, meter = self.admitted, self._meter
        if meter is not None:
            if meter.reported:
                prompt = meter.prompt_tokens
                prompt = admitted.prompt_estimate if prompt is None else prompt
                return prompt, meter.completion_tokens
            if not meter.content_events:  # nothing came: what vLLM may have prefilled
                return admitted.prompt_estimate, 0
            self.forwarder.metrics.usage_missing.labels(admitted.key_name).inc()
            if meter.done:  # a whole stream without usage: nothing says it was smaller
                return self._reservation()
            return admitted.prompt_estimate, meter.content_events
        usage = self.outcome.usage
        if usage is not None:
            return usage.prompt_tokens, usage.completion_tokens
        if self.outcome.status == 200:  # an answer whose usage is missing or unreadable
            self.forwarder.metrics.usage_missing.labels(admitted.key_name).inc()
            return self._reservation()
        if self.outcome.status == 499:  # gone while the upstream was working on it
            return admitted.prompt_estimate, 0
        return 0, 0

    def _reservation(self) -> tuple[int, int]:
        """The reservation as (prompt, completion): the estimate, and the rest."""
        prompt = self.admitted.prompt_estimate
        return prompt, max(self.admitted.reserved - prompt, 0)


def _error_event(error: GatewayError) -> bytes:
    """What vLLM itself sends for an error after the stream began (REFERENCE section 1)."""
    return b"data: " + error.body() + b"\n\ndata: [DONE]\n\n"
