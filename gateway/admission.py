"""The gate in front of the upstream: key, body, model, token cap, limiter.

Order (each step answers with its own envelope): the bearer key, or Anthropic's
``x-api-key`` header (401); what refuses the
request whatever its body (:meth:`Gate.refuse_early`: the in-flight bound full, 503; the
key past its requests, at its concurrency or out of tokens, 429; a key over a budget of the
ledger, 429 ``budget_exceeded``), before the body is read;
the body size (413), its JSON values (``max_body_values``, ``max_body_containers``, 400,
before the parse), the JSON fields (400), the key's allowed models (403) and the served
models (404: base models and LoRA adapters, as the upstreams list them; the request then
goes only to upstreams serving its ``model``, ``Admitted.route_model``), the fan-out bounds
(400, :func:`gateway.caps.check_fan_out`), the prompt count (within a time budget, large
bodies off the event loop: :mod:`gateway.prompt_budget`), the token cap (400 when
``caps.over_cap`` is ``reject``), the gateway-wide in-flight bound (503 ``gateway_busy``
with ``Retry-After``, ``max_in_flight``), then the limiter reserves the estimated prompt
tokens plus the effective ``max_tokens`` for every completion asked for (``n``,
``best_of``, batch prompts: :attr:`gateway.body.RequestBody.reservation`) (429).
With ``upstream_priority`` the key's class goes upstream as the body's ``priority``, the
client's own never earlier (:mod:`gateway.priority_class`); ``Admitted.priority`` orders the hold.
With ``routing: aware`` the router's affinity key is read from the parsed body once
admitted (``Admitted.route_key``). Streams are forwarded asking for usage on every chunk.
The in-flight slot and the key's lease are one :class:`gateway.request_lease.RequestLease`,
carried by :class:`Admitted` and settled with the real usage by :mod:`gateway.billing`.
``docs/gateway-bodies.md`` says why this order, and what bounds a body's work. The agent APIs
(:mod:`gateway.agent_apis`) take the same steps with their own fields, cap field and prompt
bound, and no stream options (their streams are metered by their events).
A client that hangs up while sending its body is a quiet 499, counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from gateway.accounting import NO_MODEL, answer_labels
from gateway.agent_apis import AgentApi
from gateway.body import encode_body, parse_fields
from gateway.caps import CHAT_CAP_FIELDS, FanOutLimits, apply_token_cap, check_fan_out
from gateway.errors import (
    AuthenticationFailed,
    ClientGone,
    NotFound,
    PermissionDenied,
    RateLimitExceeded,
    UpstreamUnavailable,
)
from gateway.ledger.budgets import KeyBudgets
from gateway.limits.in_flight import InFlightLimit
from gateway.metrics import GatewayMetrics
from gateway.oversized_body import refuse_oversized
from gateway.priority_class import INTERACTIVE, forwarded_priority
from gateway.prompt_budget import CountBudget
from gateway.prompt_tokens import ByteBound, PromptCounter
from gateway.request_lease import KeyLease, RequestLease
from gateway.settings import CapSettings
from gateway.upstreams import UpstreamPool

ANONYMOUS = "anonymous"
OTHER_MODEL = "other"  # the metric label of a name no upstream serves


class KeyLike(FanOutLimits, Protocol):
    """What the gateway reads of ``gateway.key_store.ApiKey``."""

    @property
    def name(self) -> str: ...

    @property
    def max_tokens(self) -> int | None: ...

    @property
    def models(self) -> Collection[str]: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def scheduling_priority(self) -> int: ...


class KeyStoreLike(Protocol):
    def authenticate(self, secret: str) -> KeyLike | None: ...


class BudgetsLike(Protocol):
    """What the gate asks of :class:`gateway.ledger.Ledger`: a spent budget's 429, and the
    ``x-budget-*`` headers of an admitted request (what is left)."""

    def refusal(self, name: str, budgets: KeyBudgets | None) -> RateLimitExceeded | None: ...

    def remaining(self, name: str, budgets: KeyBudgets | None) -> dict[str, str]: ...


class LimiterLike(Protocol):
    async def acquire(self, key: KeyLike, tokens: int) -> KeyLease: ...

    def early_refusal(self, key: KeyLike) -> RateLimitExceeded | None: ...


@dataclass(slots=True)
class Admitted:
    """What admission learned about one request: the facts its exchange works from.

    Built once by :meth:`Gate.admit` and never changed after; what the exchange produces
    (status, timings, usage) is :class:`gateway.exchange.Outcome`, a second object. Not a
    frozen dataclass: its ``__init__`` would set each field through ``object.__setattr__``,
    4x the cost of building one (timeit here, 2026-12-06)."""

    path: str
    key_name: str
    model: str  # the metric label: a served model's name, "other", or "none" (a listing)
    body: bytes | None  # what goes upstream (capped, usage requested); None for a GET
    stream: bool
    include_usage: bool  # whether the client itself asked for the usage chunk
    prompt_estimate: int
    lease: RequestLease  # every slot the request holds; its headers, what it reserved
    started: float
    method: str = "POST"
    allowed_models: Collection[str] = ()  # the key's models (empty: any); for a listing
    include_chunk_usage: bool = False  # whether the client asked for usage on every chunk
    choices: int = 1  # completions per prompt (n): how a stream's choices map to prompts
    route_key: int | None = None  # the router's affinity key, read from the parsed body
    # The served name (base model or adapter) whose upstreams the request may go to;
    # None: any upstream (no upstream has listed what it serves yet).
    route_model: str | None = None
    api: AgentApi | None = None  # an agent API's route (its stream, its errors); None: chat's
    priority: int = INTERACTIVE  # the key's class (gateway.priority_class): the hold's order


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """Admission: reads the caps, the body limit and whether anonymous calls are allowed."""

    caps: CapSettings
    max_body_bytes: int
    allow_anonymous: bool
    pool: UpstreamPool
    metrics: GatewayMetrics
    key_store: KeyStoreLike | None
    limiter: LimiterLike | None
    in_flight: InFlightLimit | None = None
    prompt_counter: PromptCounter = field(default_factory=ByteBound)
    count_budget: CountBudget = field(default_factory=CountBudget)  # its time, its thread
    max_body_values: int | None = None  # None: no bound (gateway.body_values)
    max_body_containers: int | None = None  # None: no bound
    route_key: Callable[[str, Mapping[str, Any]], int | None] | None = None  # the router's
    budgets: BudgetsLike | None = None  # the ledger's budgets (None: no ledger)
    upstream_priority: bool = True  # the key's class goes upstream as the body's priority

    def authenticate(self, request: Request) -> KeyLike | None:
        """The caller's key; ``None`` only when anonymous access is allowed."""
        scope = request.scope
        scheme, _, secret = header(scope, b"authorization").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            secret = header(scope, b"x-api-key")  # as Anthropic's SDKs send it
        secret = secret.strip()
        if not secret:
            if self.allow_anonymous:
                answer_labels(scope).key = ANONYMOUS
                return None
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
            )
        key = self.key_store.authenticate(secret) if self.key_store else None
        if key is None or not key.enabled:
            raise AuthenticationFailed("invalid or disabled API key")
        answer_labels(scope).key = key.name
        return key

    async def admit_listing(self, request: Request, path: str, started: float) -> Admitted:
        """``GET /v1/models``: the key (401), then one request of its limits like any other
        call (429), reserving no tokens. The lease is settled with 0 once answered."""
        key = self.authenticate(request)
        key_name = key.name if key is not None else ANONYMOUS
        return Admitted(
            path=path,
            key_name=key_name,
            model=NO_MODEL,
            body=None,
            stream=False,
            include_usage=False,
            prompt_estimate=0,
            lease=await self._acquire(key, key_name, NO_MODEL, 0),
            started=started,
            method="GET",
            allowed_models=key.models if key is not None else (),
        )

    def model_label(self, model: str) -> str:
        """A bounded metric label: a served model's name, else ``other``."""
        return model if model in self.pool.known_models() else OTHER_MODEL

    async def admit(
        self,
        request: Request,
        path: str,
        with_cap: bool,
        started: float,
        api: AgentApi | None = None,
    ) -> Admitted:
        """``api``: the agent API the route serves (its body's fields, its cap field, its
        prompt bound: :mod:`gateway.agent_apis`); ``None`` for chat, completions, embeddings."""
        key = self.authenticate(request)
        key_name = key.name if key is not None else ANONYMOUS
        self.refuse_early(key, key_name)
        received = await self.read_body(request, key_name)
        body = parse_fields(
            received,
            generates=with_cap,
            max_values=self.max_body_values,
            max_containers=self.max_body_containers,
            api=api,
        )
        known = self.pool.known_models()
        served = body.model in known
        label = answer_labels(request.scope).model = body.model if served else OTHER_MODEL
        self.check_model(key, body.model)
        check_fan_out(body, key, self.caps)
        if api is None:
            counting = self.count_budget.count(self.prompt_counter, body.data, len(received))
            body.count_prompt(await counting)
        else:  # the bound is a pass over the body, no tokenizer: no budget, no thread
            fallback = self.count_budget.fallback
            overheads = fallback if isinstance(fallback, ByteBound) else ByteBound()
            body.prompt_tokens_estimate = api.prompt_bound(overheads).count(body.data)
        changed = body.ambiguous  # a field named twice: forward what the gateway read
        if with_cap:
            fields = CHAT_CAP_FIELDS if api is None else (api.output.name,)
            changed |= apply_token_cap(body, key.max_tokens if key else None, self.caps, fields)
            if api is None and body.stream and not body.include_chunk_usage:
                # usage on every chunk, so a cut stream bills what vLLM generated; the relay
                # strips what the client did not ask for
                options = body.data.get("stream_options") or {}
                body.data["stream_options"] = {
                    **options,
                    "include_usage": True,
                    "continuous_usage_stats": True,
                }
                changed = True
        priority = key.scheduling_priority if key is not None else INTERACTIVE
        if self.upstream_priority:
            forwarded = forwarded_priority(body.data, priority)
            if forwarded is not None:  # a batch key, or a client asking for an earlier turn
                body.data["priority"] = forwarded
                changed = True
        raw = encode_body(body.data) if changed else received
        reserve = body.reservation
        lease = await self._acquire(key, key_name, label, reserve)
        route_key = self.route_key(path, body.data) if self.route_key is not None else None
        return Admitted(
            path=path,
            key_name=key_name,
            model=label,
            body=raw,
            stream=body.stream,
            include_usage=body.include_usage,
            prompt_estimate=body.prompt_tokens_estimate,
            lease=lease,
            started=started,
            include_chunk_usage=body.include_chunk_usage,
            choices=body.choices,
            route_key=route_key,
            route_model=body.model if served else None,
            api=api,
            priority=priority,
        )

    def check_model(self, key: KeyLike | None, model: str) -> None:
        """The key's grants (403), then the served names (404, as vLLM words it). A grant
        names a base model or an adapter; a base's grant is not its adapters'."""
        if key is not None and key.models and model not in key.models:
            raise PermissionDenied(f"this key may not use model '{model}'", param="model")
        known = self.pool.known_models()
        if known and model not in known:
            raise NotFound(
                f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )

    def refuse_early(self, key: KeyLike | None, key_name: str) -> None:
        """Before the body is read: what would refuse the request whatever its body -- the
        in-flight bound full (503), the key's limiter refusing it now (429) -- refuses it
        at once, so a key past its limits costs no parse and no count (model ``none``)."""
        bound = self.in_flight
        if bound is not None and bound.count >= bound.limit:
            raise self._busy(key_name, NO_MODEL)
        refused = self.limiter.early_refusal(key) if key and self.limiter else None
        if refused is None and key is not None and self.budgets is not None:
            refused = self.budgets.refusal(key_name, getattr(key, "budgets", None))
        if refused is not None:
            self._count_refusal(key_name, NO_MODEL, refused.reason, refused.status_code)
            raise refused

    async def read_body(self, request: Request, key_name: str) -> bytes:
        """The body within ``max_body_bytes``; a client that hangs up while uploading it is
        answered quietly with a 499 (counted, model ``none``: the body was never parsed)."""
        return await read_body(request, self.max_body_bytes)

    async def _acquire(
        self, key: KeyLike | None, key_name: str, model_label: str, tokens: int
    ) -> RequestLease:
        """A slot of the in-flight bound (503 when full), then the key's lease (429)."""
        bound = self.in_flight
        if bound is not None and not bound.enter():
            raise self._busy(key_name, model_label)
        try:
            key_lease = await self._lease(key, key_name, model_label, tokens)
        except BaseException:
            if bound is not None:
                bound.leave()
            raise
        lease = RequestLease(bound, key_lease, tokens)
        if self.budgets is not None and key is not None:  # the ledger's x-budget-* headers
            left = self.budgets.remaining(key_name, getattr(key, "budgets", None))
            lease.headers.update(left)
            lease.raw_headers += [(k.encode(), v.encode()) for k, v in left.items()]
        return lease

    async def _lease(
        self, key: KeyLike | None, key_name: str, model_label: str, tokens: int
    ) -> KeyLease | None:
        if key is None or self.limiter is None:
            return None
        try:
            return await self.limiter.acquire(key, tokens)
        except RateLimitExceeded as exc:
            self._count_refusal(key_name, model_label, exc.reason, exc.status_code)
            raise

    def _busy(self, key_name: str, model_label: str) -> UpstreamUnavailable:
        """The 503 of a full in-flight bound, counted."""
        limit = self.in_flight.limit if self.in_flight is not None else 0
        busy = UpstreamUnavailable(
            f"the gateway is serving its limit of {limit} requests; retry shortly",
            code="gateway_busy",
            headers={"retry-after": "1"},
        )
        self._count_refusal(key_name, model_label, "in_flight", busy.status_code)
        return busy

    def _count_refusal(self, key_name: str, model_label: str, reason: str, status: int) -> None:
        # The answer itself is counted by gateway.accounting, like every other answer.
        self.metrics.rate_limited.labels(key_name, reason).inc()


def header(scope: Scope, name: bytes) -> str:
    """The first ``name`` header of the request (``""`` when it has none), decoded as
    Starlette decodes it. Read from the scope's list: no ``Headers`` object is built for
    the two or three headers admission reads (the request and two lookups 2.1-3.7 -> 1.4-2.0
    us, a loop of 100,000 here, 2026-12-07)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) before keeping it all (the rest is
    dropped first: :mod:`gateway.oversized_body`); a client that hangs up halfway raises
    :class:`~gateway.errors.ClientGone` (499).

    Read from the ASGI ``receive`` as ``Request.stream`` reads it, without its async
    generator (each one is registered with the event loop and finalised: a one-part body's
    read 5.9-6.4 -> 2.2-3.0 us, a loop of 100,000 here, 2026-12-07); a refused body's rest
    is read by :func:`_rest`."""
    length = header(request.scope, b"content-length")
    declared = int(length) if length.isdigit() else None
    receive = request.receive
    parts: list[bytes] = []
    size = 0
    more = True
    try:
        if declared is not None and declared > limit:
            raise await refuse_oversized(_rest(receive), limit, size, declared)
        while more:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                size += len(chunk)
                if size > limit:
                    rest = _rest(receive) if more else _rest(None)
                    raise await refuse_oversized(rest, limit, size, declared)
                if chunk:
                    parts.append(chunk)
            elif kind == "http.disconnect":
                raise ClientDisconnect()
    except ClientDisconnect:
        raise ClientGone(f"the client hung up after {size} bytes of the body") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _rest(receive: Receive | None) -> AsyncIterator[bytes]:
    """The rest of a body from ``receive`` (``None``: it has ended), as ``Request.stream``
    yields it: a disconnect raises ``ClientDisconnect``."""
    while receive is not None:
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if not message.get("more_body", False):
                receive = None
            if body:
                yield body
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
