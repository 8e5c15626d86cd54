"""Spill-over: a remote OpenAI-compatible endpoint as the backend of last resort.

    spill, prober = build_spill(settings.spill, pool=pool, keys=store, ...)  # None: not set
    forwarder = Forwarder(..., spill=spill)     # gateway.upstream_call: one call, open_within

A request goes to the remote endpoint (:class:`gateway.spill_settings.SpillSettings`) only
when all of these hold:

1. its key opted in (``spill: true`` in the keys file) and is not ``on_premises: true``
   (which wins, whatever else says); anonymous requests never spill;
2. the remote is not down: its ``/v1/models`` answered the last probe (every
   ``probe_interval`` s, :class:`RemoteProber`), and it refused no connection since;
3. every local replica serving the model refused it: none is ready (it goes at once,
   without waiting in the hold: reason ``down``), the replicas answered 503 or were all over
   their queue bound (``busy``), or the hold queue was full or its wait ran out (``held``).
   A local answer that may have started (a 502, a dropped connection, a first-byte timeout)
   is never sent again, here or anywhere.

On the way out the remote's own key replaces any ``Authorization`` (the client's key never
leaves the gateway; nor does the replicas' ``upstream_api_key``), and the model is renamed
when ``models`` maps it. The answer is relayed as a replica's is (the same idle and total
deadlines, the same metering), billed to the key under the remote's name: the usage ledger's
``backend`` column, ``vkit_gateway_spilled_tokens_total{backend}``; the requests are
counted in ``vkit_gateway_spilled_requests_total{backend,reason}``. A remote that refuses
the gateway's key (401, 403) is a 502 to the client, logged: the client's key was fine.

With ``required: true`` the gateway does not start unless the remote's ``/v1/models``
answers (:func:`check_reachable`, one line).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.client import (
    AiohttpClient,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamDropped,
    UpstreamResponse,
    read_and_release,
)
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import GatewayMetrics
from gateway.routing import InFlightResponse, sending
from gateway.routing.holding import DEADLINE, QUEUE_FULL
from gateway.spill_settings import SpillError, SpillSettings
from gateway.upstream_call import UPSTREAMS_FULL
from gateway.upstreams import Upstream, UpstreamPool
from launcher.supervision.readiness import MODELS_PATH, model_ids

if TYPE_CHECKING:
    from gateway.upstream_call import Forwarder

log = logging.getLogger("vkit.gateway.spill")

DOWN = "down"  # no local replica of the model ready
BUSY = "busy"  # the replicas answered 503, or every queue was over its bound
HELD = "held"  # the hold queue was full, or the wait for a ready replica ran out
REASONS = (DOWN, BUSY, HELD)

Opened = tuple[Upstream, UpstreamResponse]


class SpillKey(Protocol):
    @property
    def spill(self) -> bool | None: ...

    @property
    def on_premises(self) -> bool | None: ...


@runtime_checkable
class KeyDirectory(Protocol):
    """The key store, asked for a key by name (only when a request could spill)."""

    def named(self, name: str) -> SpillKey | None: ...


def may_spill(key: SpillKey | None) -> bool:
    """Whether a key's requests may leave the premises: opted in and not on-premises only."""
    return key is not None and bool(key.spill) and not key.on_premises


def remote_headers(api_key: str | None) -> dict[str, str]:
    """The only headers sent to the remote: JSON, and its own bearer key."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class Spill:
    """The remote endpoint of one gateway and the rule that sends requests there."""

    def __init__(
        self,
        settings: SpillSettings,
        *,
        pool: UpstreamPool,
        keys: KeyDirectory | None,
        client: UpstreamClient,
        api_key: str | None,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        url = settings.base_url
        assert url is not None, "spill-over without a url"
        self.settings = settings
        self.remote = Upstream(url=url, label=settings.name, backend=settings.name)
        self.pool = pool
        self.keys = keys
        self.client = client
        self.headers = remote_headers(api_key)
        self.metrics = metrics
        self.clock = clock
        self._refused_key = False

    @property
    def usable(self) -> bool:
        """Not known to be down (before its first probe it counts as up, as a replica does)."""
        remote = self.remote
        return remote.ready or not remote.probed

    def allows(self, tenant: str) -> bool:
        """Whether the key named ``tenant`` may spill now (a remote that is down: never)."""
        if not self.usable or self.keys is None:
            return False
        return may_spill(self.keys.named(tenant))

    async def open_within(
        self,
        local: Forwarder,
        deadline: float,
        method: str,
        path: str,
        body: bytes | None,
        route_key: int | None,
        tenant: str,
        model: str | None,
        priority: int = 0,
    ) -> Opened:
        """The local replicas' answer (``local``'s upstream call), unless every local replica
        refused the request and its key may spill: then the remote's (the module's docstring)."""
        if self.pool.cannot_serve(model) and self.allows(tenant):
            return await self.send(deadline, method, path, body, model, DOWN)
        try:
            upstream, response = await local.open_within(
                deadline, method, path, body, route_key, tenant, model, priority, local_only=True
            )
        except UpstreamUnavailable as refused:
            if not self.allows(tenant):
                raise
            return await self.send(deadline, method, path, body, model, _reason(refused))
        if response.status == 503 and self.allows(tenant):
            await read_and_release(response)  # a local refusal, already read: nothing started
            return await self.send(deadline, method, path, body, model, BUSY)
        return upstream, response

    async def send(
        self,
        deadline: float,
        method: str,
        path: str,
        body: bytes | None,
        model: str | None,
        reason: str,
    ) -> Opened:
        """The request sent to the remote; its response head within ``first_byte`` and
        ``deadline``."""
        remote, settings = self.remote, self.settings
        self.metrics.spilled_requests.labels(remote.backend, reason).inc()
        limit = max(0.0, min(settings.first_byte, deadline - self.clock()))
        try:
            async with asyncio.timeout(limit):
                with sending(remote):
                    sent = await self.client.send(
                        method, remote.url + path, self.headers, self.renamed(body, model)
                    )
        except TimeoutError:
            self._count_error("timeout")
            raise UpstreamTimeout(
                f"the spill-over endpoint {remote.label} sent nothing within {limit:g} s"
            ) from None
        except UpstreamConnectError:
            remote.ready, remote.probed = False, True  # down until a probe finds it again
            self._count_error("connect")
            log.warning("spill-over endpoint %s refused a connection: down", remote.label)
            raise UpstreamUnavailable(
                "no local replica could take the request and the spill-over endpoint "
                "could not be reached; retry shortly"
            ) from None
        except (UpstreamBadResponse, UpstreamDropped):
            self._count_error("dropped")
            raise UpstreamError(
                f"the spill-over endpoint {remote.label} closed the connection without answering"
            ) from None
        response = InFlightResponse(sent, remote)
        if response.status in (401, 403):
            await read_and_release(response)
            self._count_error("status")
            if not self._refused_key:
                self._refused_key = True
                log.error(
                    "spill-over endpoint %s refused the gateway's key (%d): check its api_key",
                    remote.label,
                    response.status,
                )
            raise UpstreamError(f"the spill-over endpoint {remote.label} refused the gateway")
        return remote, response

    def renamed(self, body: bytes | None, model: str | None) -> bytes | None:
        """``body`` with its model renamed as ``models`` maps it, and without the
        ``priority`` the gateway wrote for its replicas (gateway.priority_class): the remote's
        scheduling policy is not the kit's, and vLLM on its default ``fcfs`` refuses any
        priority but 0. Unchanged when neither applies."""
        names = self.settings.models
        if body is None or (not names and b'"priority"' not in body):
            return body
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict):
            return body
        name = data.get("model")
        renamed = names.get(name) if isinstance(name, str) else None
        if renamed is None and "priority" not in data:
            return body
        if renamed is not None:
            data["model"] = renamed
        data.pop("priority", None)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _count_error(self, kind: str) -> None:
        self.metrics.upstream_errors.labels(self.remote.label, kind).inc()


def _reason(refused: GatewayError) -> str:
    """The spill reason of a local refusal (its code)."""
    if refused.code in (QUEUE_FULL, DEADLINE):
        return HELD
    if refused.code in ("replicas_overloaded", UPSTREAMS_FULL):
        return BUSY
    return DOWN


class RemoteProber:
    """The remote's readiness: its ``/v1/models`` answering 200 with a model listed, asked
    with its key every ``probe_interval`` s; a change is logged once. ``spill_up`` says it."""

    def __init__(self, spill: Spill, client: UpstreamClient) -> None:
        self.spill = spill
        self.client = client

    async def run_forever(self) -> None:
        try:
            while True:
                await self.probe()
                await asyncio.sleep(self.spill.settings.probe_interval)
        finally:
            await self.client.aclose()

    async def probe(self) -> bool:
        spill = self.spill
        remote = spill.remote
        problem = await answers(self.client, spill.settings, spill.headers)
        if problem is None and not remote.ready:
            log.info("spill-over endpoint %s is answering", remote.label)
        elif problem is not None and (remote.ready or not remote.probed):
            log.warning("spill-over endpoint %s is down: %s", remote.label, problem)
        remote.ready, remote.probed = problem is None, True
        spill.metrics.spill_up.labels(remote.backend).set(1 if remote.ready else 0)
        return remote.ready


async def answers(
    client: UpstreamClient, settings: SpillSettings, headers: Mapping[str, str]
) -> str | None:
    """``None`` when the remote's ``/v1/models`` lists a model within ``probe_timeout``;
    else what went wrong, in a few words."""
    url = f"{settings.base_url}{MODELS_PATH}"
    try:
        async with asyncio.timeout(settings.probe_timeout):
            response = await client.send("GET", url, headers, None)
            body = await read_and_release(response)
    except TimeoutError:
        return f"no answer within {settings.probe_timeout:g} s"
    except UpstreamClientError as exc:
        return str(exc) or type(exc).__name__
    if response.status != 200:
        return f"{MODELS_PATH} answered {response.status}"
    if not model_ids(body):
        return f"{MODELS_PATH} lists no model"
    return None


def check_reachable(settings: SpillSettings) -> None:
    """At start-up, for a ``required`` remote: :class:`SpillError` (one line) unless its
    ``/v1/models`` answers. Runs its own event loop: call it before serving."""
    if settings.base_url is None or not settings.required:
        return
    headers = remote_headers(settings.secret())

    async def probe() -> str | None:
        client = AiohttpClient(settings.connect, max_connections=2)
        try:
            return await answers(client, settings, headers)
        finally:
            await client.aclose()

    problem = asyncio.run(probe())
    if problem is not None:
        raise SpillError(
            f"spill-over endpoint {settings.name} at {settings.base_url} does not answer: "
            f"{problem} (spill.required is set)"
        )


def build_spill(
    settings: SpillSettings,
    *,
    pool: UpstreamPool,
    keys: KeyDirectory | None,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
    client: UpstreamClient | None = None,
    probe_client: UpstreamClient | None = None,
) -> tuple[Spill, RemoteProber] | None:
    """The spill-over endpoint and its prober (``None`` when ``url`` is unset). Its clients
    are the gateway's seam (:class:`gateway.client.UpstreamClient`), aiohttp by default:
    https included."""
    if settings.base_url is None:
        return None
    spill = Spill(
        settings,
        pool=pool,
        keys=keys,
        client=client or AiohttpClient(settings.connect),
        api_key=settings.secret(),
        metrics=metrics,
        clock=clock,
    )
    prober = RemoteProber(spill, probe_client or AiohttpClient(settings.connect, 2))
    return spill, prober
