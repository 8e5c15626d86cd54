"""``create_app``: the gateway as a FastAPI app, built from explicit arguments.

Nothing happens at import and nothing is global: settings, the key store, the limiter,
the upstream client, the metrics registry and the clock are all passed in. The parts are
built by :func:`gateway.running.build_gateway` into one typed
:class:`~gateway.running.RunningGateway` (``app.running``); the lifespan is its: the
background upstream prober (and, per the ``routing`` and ``discovery`` settings, the replica
scraper and discovery of :mod:`gateway.routing`), then the clients closed.

Public routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, the
agent APIs ``/v1/responses`` and ``/v1/messages`` (:mod:`gateway.agent_apis`; errors on
``/v1/messages`` and under it in Anthropic's envelope), ``GET /v1/models`` (the union of what
the upstreams serve, base models and LoRA adapters, only the key's models; one request of the
key's limits), ``/livez`` and a bare ``/readyz`` (status only). Any other path is a 404
envelope: vLLM's operational routes (loading and unloading adapters, ``/sleep``,
``/collective_rpc``, ...) are never forwarded; an operator calls them on the replica itself
(docs/gateway-models.md). Every answer is counted by :mod:`gateway.accounting`.

The proxied routes are the table :data:`_PROXIED` (path, documented body, whether the token
cap applies): adding one is one line there. Their ``POST`` goes straight to
:func:`gateway.proxy_endpoint.proxy_endpoint` (``GatewayApp.proxied``), past Starlette's
middleware stack and router; the rest of the app is FastAPI's.

:func:`create_admin_app` builds the admin listener's app (``GatewaySettings.admin_host`` and
``admin_port``): ``/metrics``, ``/readyz`` with each upstream's state, ``/openapi.json``
and ``/redoc``. Neither is reachable on the public port.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import openapi_bodies
from gateway.accounting import RequestAccounting
from gateway.admission import Gate, KeyStoreLike, LimiterLike
from gateway.agent_apis import MESSAGES, RESPONSES, AgentApi, api_of
from gateway.client import UpstreamClient
from gateway.errors import (
    RETRY_AFTER_S,
    GatewayError,
    InvalidRequest,
    NotFound,
    error_envelope,
)
from gateway.exchange import Exchange, ModelListing
from gateway.ledger import Ledger
from gateway.metrics import GatewayMetrics
from gateway.prompt_tokens import PromptCounter
from gateway.proxy_endpoint import envelope_response, proxy_endpoint
from gateway.routing import Hold
from gateway.running import RunningGateway, build_gateway
from gateway.settings import GatewaySettings
from gateway.spill import Spill
from gateway.upstream_call import Forwarder
from gateway.upstreams import UpstreamPool

log = logging.getLogger("vkit.gateway")


class GatewayApp(FastAPI):
    """The public app; ``running`` is the gateway it serves, typed (the admin app, the
    entry point and the tests read its parts there). ``proxied``: the ASGI app that answers
    ``POST`` to each proxied path, counted (:func:`gateway.proxy_endpoint.proxy_endpoint`)."""

    running: RunningGateway
    proxied: Mapping[str, ASGIApp] = MappingProxyType({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.proxied.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


# path, its OpenAPI body, whether it generates (a token cap), the agent API it is (or None)
_PROXIED: tuple[tuple[str, dict[str, Any], bool, AgentApi | None], ...] = (
    ("/v1/chat/completions", openapi_bodies.CHAT_COMPLETIONS, True, None),
    ("/v1/completions", openapi_bodies.COMPLETIONS, True, None),
    ("/v1/embeddings", openapi_bodies.EMBEDDINGS, False, None),
    (RESPONSES.path, openapi_bodies.RESPONSES, True, RESPONSES),
    (MESSAGES.path, openapi_bodies.MESSAGES, True, MESSAGES),
)


def create_app(
    settings: GatewaySettings,
    *,
    key_store: KeyStoreLike | None,
    limiter: LimiterLike | None,
    upstream_client: UpstreamClient | None = None,
    probe_client: UpstreamClient | None = None,
    registry: CollectorRegistry | None = None,
    metrics: GatewayMetrics | None = None,
    clock: Callable[[], float] = time.perf_counter,
    on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    prompt_counter: PromptCounter | None = None,
    ledger: Ledger | None = None,
) -> GatewayApp:
    """The gateway. ``metrics`` (built on ``registry``) may be passed in when the limiter
    needs its ``limiter_backend_errors`` counter; ``on_shutdown`` closes what the caller
    opened for it (a Redis client); ``background`` runs for the app's lifetime beside the
    prober (the key store's reload loop). The prober has a client of its own (``probe_client``,
    by default a small aiohttp pool): requests can exhaust theirs, never the prober's.
    ``prompt_counter`` counts each request's prompt tokens for the limiter (the models'
    tokenizers: :func:`gateway.prompt_tokens.build_prompt_counter`); by default the byte
    bound, an upper bound that needs no tokenizer. ``ledger`` (:mod:`gateway.ledger`, started
    by the caller) records usage and checks budgets; its flushes run, and it closes, with the
    app."""
    if metrics is None:
        metrics = GatewayMetrics(registry if registry is not None else CollectorRegistry())
    running = build_gateway(
        settings,
        key_store=key_store,
        limiter=limiter,
        metrics=metrics,
        clock=clock,
        upstream_client=upstream_client,
        probe_client=probe_client,
        on_shutdown=on_shutdown,
        background=background,
        prompt_counter=prompt_counter,
        ledger=ledger,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running.lifespan():
            yield

    # /openapi.json and /redoc are served by the admin listener (create_admin_app), not here.
    app = GatewayApp(
        title="vkit gateway",
        version="1",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.running = running
    _add_error_handlers(app)
    for path, _, with_cap, api in _PROXIED:
        _add_proxy_route(app, path, with_cap, running.gate, running.forwarder, api)
    _document_proxied_routes(app)
    _add_models_route(app, running.gate, running.forwarder)
    _add_probe_routes(app, running.pool, running.hold, running.forwarder.spill)
    app.add_middleware(RequestAccounting, metrics=metrics, clock=clock)
    app.proxied = MappingProxyType(
        {
            path: RequestAccounting(
                proxy_endpoint(path, with_cap, running.gate, running.forwarder, api),
                metrics=metrics,
                clock=clock,
                app_notes_status=True,  # proxy_endpoint and the exchange note theirs
            )
            for path, _, with_cap, api in _PROXIED
        }
    )
    return app


def create_admin_app(gateway: GatewayApp) -> FastAPI:
    """The admin listener's app for a gateway built by :func:`create_app`: ``/metrics``,
    ``/readyz`` with each upstream's state, ``/openapi.json`` (the public API) and ``/redoc``.
    It shares the gateway's registry and upstream pool; the gateway's lifespan runs the
    prober, so this app has none of its own."""
    running = gateway.running
    pool, registry = running.pool, running.metrics.registry
    admin = FastAPI(title="vkit gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(admin)

    @admin.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @admin.get("/readyz")
    async def readyz() -> JSONResponse:
        upstreams = {u.label: u.ready for u in pool.upstreams}
        models = sorted(pool.known_models())
        status = _readiness(pool, running.hold, running.forwarder.spill)
        body = {"status": status, "upstreams": upstreams, "models": models}
        return _readiness_response(body)

    @admin.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(gateway.openapi())

    @admin.get("/redoc")
    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{gateway.title} - ReDoc")

    return admin


def _add_proxy_route(
    app: FastAPI,
    path: str,
    with_cap: bool,
    gate: Gate,
    forwarder: Forwarder,
    api: AgentApi | None = None,
) -> None:
    async def proxy(request: Request) -> Response:
        admitted = await gate.admit(request, path, with_cap, started=forwarder.clock(), api=api)
        return Exchange(forwarder, admitted)

    # POST never reaches it (GatewayApp.proxied answers first): it gives other methods their
    # 405, and a Starlette router in front of the gateway the same answers. A plain route:
    # FastAPI's dependency solving costs ~50 us; the OpenAPI entry is _document_proxied_routes'.
    app.router.routes.append(Route(path, proxy, methods=["POST"], name=path.rsplit("/", 1)[-1]))


def _document_proxied_routes(app: FastAPI) -> None:
    responses = {"200": {"description": "the upstream's answer (JSON or an SSE stream)"}}
    responses |= {str(status): spec for status, spec in _ERROR_RESPONSES.items()}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, openapi_extra, _, _ in _PROXIED:
                operation = {"operationId": path.strip("/").replace("/", "_"), **openapi_extra}
                operation["responses"] = responses
                schema.setdefault("paths", {})[path] = {"post": operation}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_models_route(app: FastAPI, gate: Gate, forwarder: Forwarder) -> None:
    @app.get("/v1/models", responses=_ERROR_RESPONSES)
    async def list_models(request: Request) -> Response:
        admitted = await gate.admit_listing(request, "/v1/models", started=forwarder.clock())
        return ModelListing(forwarder, admitted)


def _add_probe_routes(
    app: FastAPI, pool: UpstreamPool, hold: Hold | None, spill: Spill | None = None
) -> None:
    """The public probes: no upstream addresses here (the admin ``/readyz`` has them)."""

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return _readiness_response({"status": _readiness(pool, hold, spill)})


def _readiness(pool: UpstreamPool, hold: Hold | None, spill: Spill | None = None) -> str:
    """``ready``; ``spilling`` when none is but the spill-over endpoint is up (the keys that
    may spill are served there: :mod:`gateway.spill`); ``holding`` when none is but requests
    wait for one (``hold.max_wait``: the gateway still takes them, so it stays in its load
    balancer's rotation while the replicas scale from zero); else ``not ready``."""
    if pool.any_ready:
        return "ready"
    if spill is not None and spill.usable:
        return "spilling"
    if hold is not None and hold.settings.max_wait is not None:
        return "holding"
    return "not ready"


def _readiness_response(body: dict[str, Any]) -> JSONResponse:
    """200 unless ``not ready``: then 503 with ``Retry-After``."""
    if body["status"] != "not ready":
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"retry-after": str(RETRY_AFTER_S)})


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in (
        (400, "invalid request"),
        (401, "missing or invalid key"),
        (403, "model not allowed"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "rate limited"),
        (502, "upstream error"),
        (503, "no upstream available"),
        (504, "upstream timeout"),
    )
}


def _add_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return envelope_response(exc, request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        if exc.status_code == 404:
            return envelope_response(NotFound(f"no route {path}"), path)
        api = api_of(path)
        if api is not None:  # a 405, say: the route's envelope, the invalid-request type
            raw = api.error_body(InvalidRequest(str(exc.detail)))
            return Response(raw, exc.status_code, exc.headers, media_type="application/json")
        body = error_envelope(str(exc.detail), "invalid_request_error", None, None)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        return envelope_response(InvalidRequest(str(exc)), request.url.path)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return envelope_response(GatewayError("internal gateway error"), request.url.path)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
