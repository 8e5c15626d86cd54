"""Build the running gateway from its settings: the key store, the limiter, the metrics.

Used by ``vkit gateway`` only; tests call :func:`gateway.app.create_app` with their own
parts. Limits live in memory unless ``redis_url`` is set; with Redis every gateway process
shares them, and ``redis_fail_open`` says whether to keep serving while Redis is down.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector

from gateway.admission import KeyStoreLike, LimiterLike
from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings


def build_app(settings: GatewaySettings) -> FastAPI:
    registry = CollectorRegistry()
    ProcessCollector(namespace="vkit_gateway", registry=registry)  # RSS, CPU seconds
    metrics = GatewayMetrics(registry)
    closers: list[Callable[[], Awaitable[object]]] = []
    limiter = build_limiter(settings, metrics, closers)
    return create_app(
        settings,
        key_store=build_key_store(settings),
        limiter=limiter,
        metrics=metrics,
        on_shutdown=closers,
    )


def build_key_store(settings: GatewaySettings) -> KeyStoreLike | None:
    if settings.keys_file is None:
        return None
    from gateway.key_store import KeyStore

    store: KeyStoreLike = KeyStore(settings.keys_file, clock=time.monotonic)
    return store


def build_limiter(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    closers: list[Callable[[], Awaitable[object]]],
) -> LimiterLike | None:
    """``None`` without a keys file: anonymous requests are not limited."""
    if settings.keys_file is None:
        return None
    from gateway.limits import MemoryLimiter

    if settings.redis_url is None:
        memory: LimiterLike = MemoryLimiter(clock=time.monotonic)
        return memory
    import redis.asyncio

    from gateway.limits import RedisLimiter

    client = redis.asyncio.from_url(settings.redis_url)
    closers.append(client.aclose)
    shared: LimiterLike = RedisLimiter(  # Redis's TIME: one clock for every gateway
        client,
        on_backend_error="allow" if settings.redis_fail_open else "deny",
        backend_errors=metrics.limiter_backend_errors,
        lease_ttl=settings.timeouts.total + 60,  # a crashed gateway's slots expire after
    )
    return shared
