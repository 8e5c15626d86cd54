"""The upstream call: one admitted request sent to the upstreams its route names, retried
only where no upstream can have started it.

Retries never multiply generations. An attempt is made again, on the next upstream, only
when the upstream cannot have started the request: the connection was never made, it
answered 503 (vLLM refuses; NGINX passes a replica's 503 on without retrying a POST), or
its answer was not HTTP at all (no vLLM answers so). Once it may have started -- the
connection closed or reset after the request went out, a 502 (behind NGINX: a replica
that dropped the request), a timeout -- the client gets the error and nothing is resent.
NGINX keeps to the same rule (``nginx/vkit.conf.template``: no ``non_idempotent``), so
the two layers together send a POST to at most one replica that may run it.

The attempts are a plain loop: attempt ``n`` goes to the route's ``n``-th candidate, and
after a failed one the loop sleeps ``backoff_initial * 2 ** (n - 1)`` seconds, at most
``backoff_max`` (:class:`gateway.settings.RetrySettings`). No response head within
``timeouts.first_byte`` (or by the request's ``total`` deadline, holding included) is a 504.

vLLM's admission refusal -- status 503 with one of the two bodies of its queue caps,
recognised exactly (:func:`queue_refusal`; docs/vllm-server.md#admission-caps) -- says that
replica is full, not down: the next candidate is tried at once (no backoff), and a replica
that refused is not tried again for this request. When every candidate refused, the client
gets the gateway's own 503 (code :data:`UPSTREAMS_FULL`, ``Retry-After``), not vLLM's body,
counted in ``vkit_gateway_upstream_refused_total{reason}``. Any other 503 is retried as
before, and the last one is passed on as the upstream wrote it.

vLLM's answer from a replica that is shutting down -- status 500, body "cannot schedule new
futures after shutdown", recognised exactly (:func:`shutting_down`;
docs/vllm-server.md#shutting-down) -- never started the request either: it is retried as a
refused connection is, and the router takes the replica out until a probe finds it ready
(:meth:`gateway.routing.Router.shutting_down`; kind ``shutting_down`` in
``vkit_gateway_upstream_errors_total``). Every other 500 is read and passed on, never retried.

With a spill-over endpoint (``spill``, :mod:`gateway.spill`), :meth:`Forwarder.open_within`
hands the request to :meth:`gateway.spill.Spill.open_within` (one call), which runs the local
try (``local_only``) and decides whether a request every local replica refused goes to the
remote instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.billing import UsageRecorder
from gateway.client import (
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDropped,
    UpstreamResponse,
    read_and_release,
)
from gateway.deadline import WaitDeadline
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import GatewayMetrics
from gateway.routing import Hold, InFlightResponse, Router, sending
from gateway.routing.holding import none_ready
from gateway.settings import RetrySettings, TimeoutSettings
from gateway.upstreams import Upstream, UpstreamPool

if TYPE_CHECKING:
    from gateway.spill import Spill

_ERROR_STATUSES = frozenset({502, 503})  # counted as upstream errors; only 503 is retried
UPSTREAMS_FULL = "upstreams_full"  # the 503's code when every upstream tried refused at its caps
# vLLM 0.32's admission refusals (QueueOverflowError, MaxQueuedTokensError in
# vllm/exceptions.py): the message of each, and the cap it names.
QUEUE_REFUSALS: dict[str, str] = {
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance.": "max_num_queued_reqs",
    "The engine has reached its prefill token backlog limit. "
    "Please try again later or on a different instance.": "max_num_queued_tokens",
}
_REFUSAL_MAX_BYTES = 512  # both bodies are ~200 bytes; a longer answer is something else


def vllm_error_message(body: bytes, status: int, kind: str) -> str | None:
    """The message of a short vLLM error envelope whose ``code`` is ``status`` and whose
    ``type`` is ``kind``; ``None`` for any other body."""
    if len(body) > _REFUSAL_MAX_BYTES:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or error.get("code") != status or error.get("type") != kind:
        return None
    message = error.get("message")
    return message if isinstance(message, str) else None


def queue_refusal(status: int, body: bytes) -> str | None:
    """The cap named (``max_num_queued_reqs`` | ``max_num_queued_tokens``) when ``status``
    and ``body`` are exactly vLLM's admission refusal; ``None`` for any other answer."""
    if status != 503:
        return None
    message = vllm_error_message(body, 503, "Service Unavailable")
    return QUEUE_REFUSALS.get(message) if message is not None else None


# vLLM 0.32's answer to a request that reaches it while it shuts down: its tokenizer's thread
# pool is shut already (AsyncLLM.shutdown -> BaseRenderer.shutdown), so submitting the prompt
# raises Python's RuntimeError, rendered as a 500; the engine never saw the request.
SHUTTING_DOWN_MESSAGE = "cannot schedule new futures after shutdown"


def shutting_down(status: int, body: bytes) -> bool:
    """Whether ``status`` and ``body`` are exactly vLLM's answer from a replica shutting down
    (docs/vllm-server.md#shutting-down); any other 500 is not."""
    if status != 500:
        return False
    return vllm_error_message(body, 500, "InternalServerError") == SHUTTING_DOWN_MESSAGE


class _Retryable(Exception):
    """An attempt the upstream cannot have started: the next upstream may be tried.
    ``error`` is the answer when it was the last, unless the upstream answered (503)."""

    def __init__(
        self,
        upstream: Upstream,
        response: UpstreamResponse | None,
        body: bytes,
        error: GatewayError,
        refusal: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.response = response
        self.body = body
        self.error = error
        self.refusal = refusal  # vLLM's admission refusal: the cap it names


def upstream_headers(api_key: str | None) -> dict[str, str]:
    """Headers on every forwarded request: JSON, and vLLM's ``--api-key`` when it has one."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def backoff(retry: RetrySettings, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
    return max(0.0, min(retry.backoff_max, retry.backoff_initial * 2 ** (attempt - 1)))


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
    ledger: UsageRecorder | None = None  # the usage ledger billing records in (None: none)
    spill: Spill | None = None  # the remote endpoint of last resort (None: none)

    async def open_within(
        self,
        deadline: float,
        method: str,
        path: str,
        body: bytes | None,
        route_key: int | None = None,
        tenant: str = "",
        model: str | None = None,
        priority: int = 0,
        *,
        local_only: bool = False,
        waits: WaitDeadline | None = None,
    ) -> tuple[Upstream, UpstreamResponse]:
        """:meth:`open`, but no response head within ``timeouts.first_byte`` or by
        ``deadline`` (``clock`` time: the request's total) is a 504. A request that finds no
        upstream of its ``model`` ready is first held (``hold``, released in ``priority``
        order: the key's class), which counts toward the deadline only. With ``spill``
        (unless ``local_only``: its own call of this), a request every local replica refused
        may be answered by the remote endpoint instead
        (:meth:`gateway.spill.Spill.open_within`). ``waits``: the exchange's deadline on its
        upstream waits, which bounds the head's wait here with no timer of its own (else an
        ``asyncio.timeout``)."""
        if self.spill is not None and not local_only:
            return await self.spill.open_within(
                self, deadline, method, path, body, route_key, tenant, model, priority
            )
        if self.hold is not None:
            await self.hold.until_ready(model, priority)
        limit = max(0.0, min(self.timeouts.first_byte, deadline - self.clock()))
        if waits is None:
            try:
                async with asyncio.timeout(limit):
                    return await self.open(method, path, body, route_key, tenant, model)
            except TimeoutError:
                raise UpstreamTimeout(f"the upstream sent nothing within {limit:g} s") from None
        waits.begin(limit)
        try:
            return await self.open(method, path, body, route_key, tenant, model)
        except asyncio.CancelledError:
            if not waits.timed_out():
                raise
            raise UpstreamTimeout(f"the upstream sent nothing within {limit:g} s") from None
        finally:
            waits.end()

    async def open(
        self,
        method: str,
        path: str,
        body: bytes | None,
        route_key: int | None = None,
        tenant: str = "",
        model: str | None = None,
    ) -> tuple[Upstream, UpstreamResponse]:
        """The first upstream answer of an attempt that need not be retried.

        Only upstreams serving ``model`` are tried (``None``: any). Raises
        UpstreamUnavailable (503, Retry-After) at once when every one of them has been
        probed and none is ready, and when the last attempt failed to connect; UpstreamError
        when its answer was not HTTP or the connection dropped after sending (never retried);
        when the last attempt answered 503, that answer (already read) is returned.
        ``tenant`` (the API key's name) is the router's: each key's share of its key table.
        """
        retry = self.retry
        if self.pool.cannot_serve(model):
            raise UpstreamUnavailable(none_ready(model))
        route = self.router.route(path, route_key, retry.attempts, tenant, model)
        candidates = route.candidates[: retry.attempts]
        failure: _Retryable | None = None
        full: list[Upstream] = []  # the upstreams that refused at their caps
        for attempt, upstream in enumerate(candidates, start=1):
            if upstream in full:
                continue
            if failure is not None and failure.refusal is None:
                await asyncio.sleep(backoff(retry, attempt - 1))
            try:
                return upstream, await self._try(upstream, method, path, body)
            except _Retryable as exc:
                failure = exc
                if exc.refusal is not None:
                    full.append(upstream)
        if failure is None:  # no candidate at all: an empty pool
            raise UpstreamUnavailable("no upstream is ready; retry shortly")
        if failure.refusal is not None:
            self.metrics.upstream_refused.labels(failure.refusal).inc()
            raise UpstreamUnavailable(
                "every replica tried is full (at its admission limits); retry shortly",
                code=UPSTREAMS_FULL,
            )
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
        if response.status == 500:
            return await self._unless_shutting_down(upstream, response)
        if response.status in _ERROR_STATUSES:
            self._count_error(upstream, "status")
            if response.status == 503:
                body = await read_and_release(response)
                raise _Retryable(
                    upstream,
                    response,
                    body,
                    UpstreamUnavailable("the upstream answered 503"),
                    queue_refusal(503, body),
                )
        return response

    async def _unless_shutting_down(
        self, upstream: Upstream, response: UpstreamResponse
    ) -> UpstreamResponse:
        """A 500, read whole: vLLM's answer from a replica shutting down is retried elsewhere
        (the replica out until its next good probe); any other is passed on as it came."""
        body = await read_and_release(response)
        if not shutting_down(500, body):
            return _BufferedResponse(500, response.content_type, body)
        self.router.shutting_down(upstream)
        self._count_error(upstream, "shutting_down")
        error = UpstreamUnavailable("the upstream is shutting down")
        raise _Retryable(upstream, None, b"", error)

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

    def unread(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass
