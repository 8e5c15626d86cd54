"""Forwarding one admitted request upstream and relaying the answer.

:class:`Exchange` is an ASGI response: it opens the upstream (retrying connection
failures and 502/503 on the next upstream with tenacity, before any byte reached the
client), relays the body, applies the layered timeouts, watches for the client going away,
and in every case closes or releases the upstream connection, settles the limiter lease
with the tokens really used and records the metrics.

Timeouts (``GatewaySettings.timeouts``): no response head within ``first_byte`` (or ``total``)
-> 504 envelope; during a stream, a gap over ``idle`` or the ``total`` deadline -> an
``data: {"error": ...}`` event and ``data: [DONE]``. Either way the upstream connection
is closed, so vLLM aborts (REFERENCE section 4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from gateway.admission import Admitted
from gateway.client import (
    UpstreamBroken,
    UpstreamClient,
    UpstreamConnectError,
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
from gateway.settings import RetrySettings, TimeoutSettings
from gateway.upstreams import Upstream, UpstreamPool

log = logging.getLogger("vkit.gateway.proxy")

_RETRY_STATUSES = frozenset({502, 503})
_JSON = b"application/json"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Retryable(Exception):
    def __init__(self, upstream: Upstream, response: UpstreamResponse | None, body: bytes) -> None:
        self.upstream = upstream
        self.response = response
        self.body = body


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
    the upstream pool, the client, the metrics and the clock."""

    retry: RetrySettings
    timeouts: TimeoutSettings
    upstream_headers: dict[str, str]
    pool: UpstreamPool
    client: UpstreamClient
    metrics: GatewayMetrics
    clock: Callable[[], float]

    async def open_within(
        self, limit: float, method: str, path: str, body: bytes | None
    ) -> tuple[Upstream, UpstreamResponse]:
        """:meth:`open`, but no response head within ``limit`` seconds is a 504."""
        try:
            async with asyncio.timeout(limit):
                return await self.open(method, path, body)
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream sent nothing within {limit:g} s") from None

    async def open(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[Upstream, UpstreamResponse]:
        """The first upstream answer that is not a connection failure, 502 or 503.

        Raises UpstreamUnavailable when every attempt failed to connect; when the last
        attempt answered 502/503, that answer (already read) is returned.
        """
        retry = self.retry
        candidates = self.pool.candidates(retry.attempts)
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
            raise UpstreamUnavailable("no upstream could be reached")
        status, content_type = failure.response.status, failure.response.content_type
        return failure.upstream, _BufferedResponse(status, content_type, failure.body)

    async def _try(
        self, upstream: Upstream, method: str, path: str, body: bytes | None
    ) -> UpstreamResponse:
        try:
            response = await self.client.send(
                method, upstream.url + path, self.upstream_headers, body
            )
        except UpstreamConnectError:
            self.metrics.upstream_errors.labels(upstream.label, "connect").inc()
            raise _Retryable(upstream, None, b"") from None
        if response.status in _RETRY_STATUSES:
            self.metrics.upstream_errors.labels(upstream.label, "status").inc()
            raise _Retryable(upstream, response, await read_and_release(response))
        return response


class _BufferedResponse:
    """An upstream answer already read in full (the last 502/503 after retries)."""

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = asyncio.current_task()
        assert owner is not None
        watcher = asyncio.create_task(self._watch_disconnect(receive, owner))
        metrics = self.forwarder.metrics
        metrics.in_flight.inc()
        try:
            await self._run(send)
        except asyncio.CancelledError:
            if not self._client_gone:
                raise
            owner.uncancel()
            self.outcome.status = 499
        finally:
            watcher.cancel()
            metrics.in_flight.dec()
            await self._account()

    async def _watch_disconnect(self, receive: Receive, owner: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finishing:
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
        meter = self._meter = StreamMeter(keep_usage=self.admitted.include_usage)
        self.outcome.status = 200
        headers = _SSE_HEADERS + self.admitted.headers
        await send({"type": "http.response.start", "status": 200, "headers": headers})
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
                await send({"type": "http.response.body", "body": out, "more_body": True})
        tail = meter.flush()
        if error is not None:
            response.abort()
            kind = "timeout" if isinstance(error, UpstreamTimeout) else "stream"
            self.forwarder.metrics.upstream_errors.labels(self._upstream_label, kind).inc()
            tail = _error_event(error)
        self._finishing = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _send_whole(self, send: Send, status: int, content_type: bytes, body: bytes) -> None:
        self.outcome.status = status
        self._finishing = True
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        headers += self.admitted.headers
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if self.outcome.first_byte_at is None:
            self.outcome.first_byte_at = self.forwarder.clock()
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(self, send: Send, exc: GatewayError) -> None:
        await self._send_whole(send, exc.status_code, _JSON, exc.body())

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
        metrics.request_done(
            key=admitted.key_name,
            model=admitted.model,
            status=outcome.status,
            duration=now - admitted.started,
            time_to_first_byte=None if first is None else first - admitted.started,
            overhead=now - admitted.started - outcome.upstream_wait,
        )

    def _used_tokens(self) -> tuple[int, int]:
        """Real usage when the upstream sent it; else the estimate and the chunks relayed."""
        meter = self._meter
        if meter is not None:
            usage = meter.usage
            prompt = usage.prompt_tokens if usage else self.admitted.prompt_estimate
            return prompt, meter.completion_tokens
        usage = self.outcome.usage
        if usage is not None:
            return usage.prompt_tokens, usage.completion_tokens
        if self.outcome.status == 499:  # gone while the upstream was working on it
            return self.admitted.prompt_estimate, 0
        return 0, 0


def _error_event(error: GatewayError) -> bytes:
    """What vLLM itself sends for an error after the stream began (REFERENCE section 1)."""
    return b"data: " + error.body() + b"\n\ndata: [DONE]\n\n"
