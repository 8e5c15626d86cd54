"""``create_app``: the gateway as a FastAPI app, built from explicit arguments.

Nothing happens at import and nothing is global: settings, the key store, the limiter,
the upstream client, the metrics registry and the clock are all passed in. The lifespan
starts the background upstream prober and closes the client.

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``GET /v1/models`` (only the key's models), ``/livez``, ``/readyz``, ``/metrics``.
Any other path is a 404 envelope: vLLM's operational routes are never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from gateway import openapi_bodies
from gateway.admission import Gate, KeyStoreLike, LimiterLike
from gateway.client import AiohttpClient, UpstreamClient, read_and_release
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    UpstreamError,
    error_envelope,
)
from gateway.health import UpstreamProber
from gateway.metrics import GatewayMetrics
from gateway.proxy import Exchange, Forwarder, upstream_headers
from gateway.settings import GatewaySettings
from gateway.upstreams import UpstreamPool
from launcher.supervision.readiness import ReadinessCheck, model_ids

log = logging.getLogger("vkit.gateway")

_PROXIED = (
    ("/v1/chat/completions", openapi_bodies.CHAT_COMPLETIONS, True),
    ("/v1/completions", openapi_bodies.COMPLETIONS, True),
    ("/v1/embeddings", openapi_bodies.EMBEDDINGS, False),
)


def create_app(
    settings: GatewaySettings,
    *,
    key_store: KeyStoreLike | None,
    limiter: LimiterLike | None,
    upstream_client: UpstreamClient | None = None,
    registry: CollectorRegistry | None = None,
    metrics: GatewayMetrics | None = None,
    clock: Callable[[], float] = time.perf_counter,
    on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
) -> FastAPI:
    """The gateway. ``metrics`` (built on ``registry``) may be passed in when the limiter
    needs its ``limiter_backend_errors`` counter; ``on_shutdown`` closes what the caller
    opened for it (a Redis client)."""
    if metrics is None:
        metrics = GatewayMetrics(registry if registry is not None else CollectorRegistry())
    registry = metrics.registry
    client = upstream_client or AiohttpClient(connect_timeout=settings.timeouts.connect)
    pool = UpstreamPool(settings.upstream_urls)
    api_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    forwarder = Forwarder(
        retry=settings.retry,
        timeouts=settings.timeouts,
        upstream_headers=upstream_headers(api_key),
        pool=pool,
        client=client,
        metrics=metrics,
        clock=clock,
    )
    gate = Gate(
        caps=settings.caps,
        max_body_bytes=settings.max_body_bytes,
        allow_anonymous=settings.allow_anonymous,
        pool=pool,
        metrics=metrics,
        key_store=key_store,
        limiter=limiter,
    )
    check = ReadinessCheck.of(api_key, settings.health.expected_models)
    prober = UpstreamProber(settings.health, pool, client, metrics, check)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(prober.run_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
            for close in on_shutdown:
                await close()

    app = FastAPI(title="vkit gateway", version="1", lifespan=lifespan, docs_url=None)
    app.state.forwarder = forwarder
    app.state.prober = prober
    app.state.metrics = metrics
    _add_error_handlers(app)
    for path, _, with_cap in _PROXIED:
        _add_proxy_route(app, path, with_cap, gate, forwarder)
    _document_proxied_routes(app)
    _add_models_route(app, gate, forwarder)
    _add_probe_routes(app, pool, registry)
    return app


def _add_proxy_route(
    app: FastAPI, path: str, with_cap: bool, gate: Gate, forwarder: Forwarder
) -> None:
    async def proxy(request: Request) -> Response:
        admitted = await gate.admit(request, path, with_cap, started=forwarder.clock())
        return Exchange(forwarder, admitted)

    # A plain Starlette route: FastAPI's per-request dependency solving costs ~50 us and
    # the proxy needs none of it; the OpenAPI entry is added by _document_proxied_routes.
    app.router.routes.append(Route(path, proxy, methods=["POST"], name=path.rsplit("/", 1)[-1]))


def _document_proxied_routes(app: FastAPI) -> None:
    responses = {"200": {"description": "the upstream's answer (JSON or an SSE stream)"}}
    responses |= {str(status): spec for status, spec in _ERROR_RESPONSES.items()}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, openapi_extra, _ in _PROXIED:
                operation = {"operationId": path.strip("/").replace("/", "_"), **openapi_extra}
                operation["responses"] = responses
                schema.setdefault("paths", {})[path] = {"post": operation}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_models_route(app: FastAPI, gate: Gate, forwarder: Forwarder) -> None:
    @app.get("/v1/models", responses=_ERROR_RESPONSES)
    async def list_models(request: Request) -> Response:
        key = gate.authenticate(request)
        limit = min(forwarder.timeouts.first_byte, forwarder.timeouts.total)
        _, upstream = await forwarder.open_within(limit, "GET", "/v1/models", None)
        body = await read_and_release(upstream)
        if upstream.status != 200 or model_ids(body) is None:
            raise UpstreamError("the upstream's model list could not be read")
        listing = json.loads(body)
        if key is not None and key.models:
            allowed = key.models
            listing["data"] = [
                m for m in listing["data"] if isinstance(m, dict) and m.get("id") in allowed
            ]
        return JSONResponse(listing)


def _add_probe_routes(app: FastAPI, pool: UpstreamPool, registry: CollectorRegistry) -> None:
    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        upstreams = {u.label: u.ready for u in pool.upstreams}
        ready = pool.any_ready
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "upstreams": upstreams},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


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


def _envelope_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _envelope_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _envelope_response(NotFound(f"no route {request.url.path}"))
        body = error_envelope(str(exc.detail), "invalid_request_error", None, None)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        return _envelope_response(InvalidRequest(str(exc)))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _envelope_response(GatewayError("internal gateway error"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
