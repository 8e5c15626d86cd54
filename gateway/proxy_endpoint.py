"""The proxied routes' endpoint: a plain ASGI app per route, gate then exchange.

``POST`` to a proxied path (:data:`gateway.app.PROXIED`, one line per route) is dispatched by
:class:`gateway.app.GatewayApp` straight to :func:`proxy_endpoint`, wrapped in the
:class:`~gateway.accounting.RequestAccounting` middleware: not through Starlette's middleware
stack and router (server errors, exception handlers, FastAPI's exit stack, route matching,
and a wrapper around ``send`` per layer), which took some 8% of the gateway's CPU per request
(docs/gateway-cost.md#the-request-path). Every other request (other methods, other paths,
the probes, ``/v1/models``) still goes through FastAPI.

The answers are the same as through Starlette's handlers: a
:class:`~gateway.errors.GatewayError` is its envelope (the route's: Anthropic's on
``/v1/messages``, else OpenAI's); any other exception, with nothing sent yet, is logged and
answered with the 500 envelope, then raised on to the server (as Starlette's
``ServerErrorMiddleware`` does), which logs it and closes the connection. Every status this
endpoint sends is noted in the request's :func:`~gateway.accounting.answer_labels` (the
exchange's by the exchange), so the middleware passes ``send`` on unwrapped
(``app_notes_status``).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.accounting import answer_labels
from gateway.admission import Gate
from gateway.agent_apis import AgentApi, api_of
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.upstream_call import Forwarder

log = logging.getLogger("vkit.gateway")


def envelope_response(exc: GatewayError, path: str = "") -> Response:
    """``exc`` in the envelope of the route at ``path`` (Anthropic's on /v1/messages, else
    OpenAI's), with its status and headers."""
    api = api_of(path)
    if api is None:
        return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)
    return Response(
        api.error_body(exc),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def proxy_endpoint(
    path: str, with_cap: bool, gate: Gate, forwarder: Forwarder, api: AgentApi | None = None
) -> ASGIApp:
    """The ASGI app that answers ``POST path``: admission (``with_cap``: the token cap
    applies; ``api``: the agent API the route serves), then the
    :class:`~gateway.exchange.Exchange`."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            admitted = await gate.admit(
                Request(scope, receive), path, with_cap, started=forwarder.clock(), api=api
            )
        except GatewayError as exc:
            await _envelope(exc, path, scope, receive, send)
            return
        except Exception:
            await _internal_error(scope, receive, send)
            raise
        exchange = Exchange(forwarder, admitted)
        try:
            await exchange(scope, receive, send)
        except Exception as exc:
            if exchange.outcome.status:  # the answer began: the server closes the connection
                raise
            if isinstance(exc, GatewayError):
                await _envelope(exc, path, scope, receive, send)
                return
            await _internal_error(scope, receive, send)
            raise

    return endpoint


async def _envelope(
    exc: GatewayError, path: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer :func:`envelope_response`, its status noted for the request's accounting."""
    answer_labels(scope).status = exc.status_code
    await envelope_response(exc, path)(scope, receive, send)


async def _internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    log.exception("unexpected error on %s", scope["path"])
    error = GatewayError("internal gateway error")
    await _envelope(error, scope["path"], scope, receive, send)
