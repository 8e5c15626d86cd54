"""The gate in front of the upstream: key, body, model, token cap, limiter.

Order (each step answers with its own envelope): the bearer key (401), the body size
(413), the JSON fields (400), the key's allowed models (403) and the served models (404),
the token cap (400 when ``caps.over_cap`` is ``reject``), then the limiter reserves the
estimated prompt tokens plus the effective ``max_tokens`` (429). The reservation is
settled with the real usage by :class:`gateway.proxy.Exchange`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from gateway.body import encode_body, parse_body
from gateway.caps import apply_token_cap
from gateway.errors import (
    AuthenticationFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimitExceeded,
)
from gateway.metrics import GatewayMetrics
from gateway.settings import CapSettings
from gateway.upstreams import UpstreamPool

ANONYMOUS = "anonymous"


class KeyLike(Protocol):
    """What the gateway reads of ``gateway.key_store.ApiKey``."""

    @property
    def name(self) -> str: ...

    @property
    def max_tokens(self) -> int | None: ...

    @property
    def models(self) -> Collection[str]: ...

    @property
    def enabled(self) -> bool: ...


class LeaseLike(Protocol):
    """What the gateway uses of ``gateway.limits.Lease``."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def settle(self, used_tokens: int) -> None: ...


class KeyStoreLike(Protocol):
    def authenticate(self, secret: str) -> KeyLike | None: ...


class LimiterLike(Protocol):
    async def acquire(self, key: KeyLike, tokens: int) -> LeaseLike: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """What admission learned about one request: the facts its exchange works from.

    Built once by :meth:`Gate.admit`; what the exchange produces (status, timings, usage)
    is :class:`gateway.proxy.Outcome`, a second object."""

    path: str
    key_name: str
    model: str  # the metric label: a served model's name, or "other"
    body: bytes  # what goes upstream (capped, usage requested)
    stream: bool
    include_usage: bool  # whether the client itself asked for the usage chunk
    prompt_estimate: int
    settle: Callable[[int], Awaitable[None]]  # the lease's settle(used_tokens)
    started: float
    headers: list[tuple[bytes, bytes]]  # the success-path x-ratelimit-* headers


async def _no_lease(used_tokens: int) -> None:
    return None


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

    def authenticate(self, request: Request) -> KeyLike | None:
        """The caller's key; ``None`` only when anonymous access is allowed."""
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            if self.allow_anonymous:
                return None
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        key = self.key_store.authenticate(secret.strip()) if self.key_store else None
        if key is None or not key.enabled:
            raise AuthenticationFailed("invalid or disabled API key")
        return key

    def model_label(self, model: str) -> str:
        """A bounded metric label: a served model's name, else ``other``."""
        return model if model in self.pool.known_models() else "other"

    async def admit(self, request: Request, path: str, with_cap: bool, started: float) -> Admitted:
        key = self.authenticate(request)
        key_name = key.name if key is not None else ANONYMOUS
        received = await read_body(request, self.max_body_bytes)
        body = parse_body(received)
        self.check_model(key, body.model)
        changed = False
        if with_cap:
            changed = apply_token_cap(body, key.max_tokens if key else None, self.caps)
            if body.stream and not body.include_usage:
                options = body.data.get("stream_options") or {}
                body.data["stream_options"] = {**options, "include_usage": True}
                changed = True
        raw = encode_body(body.data) if changed else received
        label = self.model_label(body.model)
        reserve = body.prompt_tokens_estimate + (body.max_tokens or 0)
        lease = await self._acquire(key, key_name, label, reserve)
        settle, headers = _no_lease, []
        if lease is not None:
            settle = lease.settle
            headers = [(k.encode(), v.encode()) for k, v in lease.headers.items()]
        return Admitted(
            path=path,
            key_name=key_name,
            model=label,
            body=raw,
            stream=body.stream,
            include_usage=body.include_usage,
            prompt_estimate=body.prompt_tokens_estimate,
            settle=settle,
            started=started,
            headers=headers,
        )

    def check_model(self, key: KeyLike | None, model: str) -> None:
        if key is not None and key.models and model not in key.models:
            raise PermissionDenied(f"this key may not use model '{model}'", param="model")
        known = self.pool.known_models()
        if known and model not in known:
            raise NotFound(
                f"model '{model}' is not served here", param="model", code="model_not_found"
            )

    async def _acquire(
        self, key: KeyLike | None, key_name: str, model_label: str, tokens: int
    ) -> LeaseLike | None:
        if key is None or self.limiter is None:
            return None
        try:
            return await self.limiter.acquire(key, tokens)
        except RateLimitExceeded as exc:
            self.metrics.rate_limited.labels(key_name, exc.reason).inc()
            # 429s count as answered requests too, so error-ratio panels and alerts see them.
            self.metrics.requests.labels(key_name, model_label, str(exc.status_code)).inc()
            raise


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is over the {limit} byte limit")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)
