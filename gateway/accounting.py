"""Request accounting: one pure ASGI middleware counts every answer of the public app.

For each HTTP request it records, once, when the answer is over:

- ``vkit_gateway_requests_total{key,model,status}``
- ``vkit_gateway_request_duration_seconds{key,model}``

whatever answered it: the exchange, the gate's 400/401/403/404/413/429, the limiter's
deny-mode 503, an unknown path's 404, an unexpected 500. The probes (``/livez``,
``/readyz``) are the monitor's own traffic and are not counted.

The labels live in an :class:`AnswerLabels` record that the middleware puts in the scope;
the app fills in what it learns through :func:`answer_labels`:

- ``key``: the key's name once the gate knows it (``anonymous`` when anonymous calls are
  allowed); ``unauthenticated`` until then, so a 401 or an unknown path carries that;
- ``model``: the bounded model label once the body is parsed (a served model's name, else
  ``other``); ``none`` for answers that name no model (a 400 body, ``GET /v1/models``);
- ``status``: the one sent in ``http.response.start``, unless the app set one (the exchange
  sets 499 when the client went away, whatever had been sent); an exception with nothing
  sent is a 500, which is what Starlette's ServerErrorMiddleware answers. An app that notes
  every status it sends itself (``app_notes_status``: the proxied routes,
  :mod:`gateway.proxy_endpoint`) is given the server's ``send`` as it is, not wrapped: a
  stream's every chunk then pays no call here.

    app.add_middleware(RequestAccounting, metrics=metrics, clock=time.perf_counter)
    ...
    answer_labels(request.scope).key = key.name   # in the gate
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics

UNAUTHENTICATED = "unauthenticated"
NO_MODEL = "none"
PROBE_PATHS = frozenset({"/livez", "/readyz"})
_SCOPE_KEY = "vkit.answer"


class AnswerLabels:
    """What one answer is counted under; ``status`` 0 means "the status that was sent"."""

    __slots__ = ("key", "model", "sent", "status")

    def __init__(self) -> None:
        self.key = UNAUTHENTICATED
        self.model = NO_MODEL
        self.status = 0
        self.sent = 0


def answer_labels(scope: Scope) -> AnswerLabels:
    """The record this request is counted under (a throwaway one when no
    :class:`RequestAccounting` is in front, so the app works without it)."""
    labels = scope.get(_SCOPE_KEY)
    if labels is None:
        labels = scope[_SCOPE_KEY] = AnswerLabels()
    return labels


class RequestAccounting:
    """Counts each HTTP answer once, by key name, model label and status, with its duration
    (``clock`` seconds from the request's arrival here until the app is done with it).
    ``app_notes_status``: the app sets ``answer_labels(scope).status`` to each status it
    sends, so ``send`` is passed on unwrapped (nothing noted: 500, as when nothing was sent)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        unaccounted: Collection[str] = PROBE_PATHS,
        app_notes_status: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock
        self.unaccounted = frozenset(unaccounted)
        self.app_notes_status = app_notes_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unaccounted:
            await self.app(scope, receive, send)
            return
        started = self.clock()
        labels = scope[_SCOPE_KEY] = AnswerLabels()
        passed_on = send
        if not self.app_notes_status:

            def send_noting_status(message: Message) -> Awaitable[None]:
                # Not a coroutine of its own: it hands back the server's awaitable, so a
                # stream's chunks pay one call each here, not one more coroutine.
                if message["type"] == "http.response.start":
                    labels.sent = message["status"]
                return send(message)

            passed_on = send_noting_status
        try:
            await self.app(scope, receive, passed_on)
        finally:
            status = labels.status or labels.sent or 500
            self.metrics.answered(labels.key, labels.model, status, self.clock() - started)
