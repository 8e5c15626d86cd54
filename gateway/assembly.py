"""Build the running gateway from its settings: the key store, the limiter, the metrics.

Used by ``vkit gateway`` only; tests call :func:`gateway.app.create_app` with their own
parts. Limits live in memory unless ``redis_url`` is set; with Redis every gateway process
shares them, and ``redis_fail_open`` says whether to keep serving while Redis is down
(docs/shared-limits.md).
Keys that set no concurrency get ``default_key_concurrency``. The keys file is reloaded by a
background task of the app's lifespan. Prompts are counted with the tokenizers that
``settings.tokenizers`` names (loaded once, here); other models' by the byte bound. The usage
ledger (``settings.ledger``) is opened and migrated here, so a database that cannot be reached
stops the start with one line; so does a spill-over endpoint set as ``required`` whose
``/v1/models`` does not answer (:func:`gateway.spill.check_reachable`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, ProcessCollector

from gateway.admission import LimiterLike
from gateway.app import GatewayApp, create_app
from gateway.key_store import KeyStore
from gateway.ledger import Ledger, LedgerCollector, open_store
from gateway.metrics import GatewayMetrics
from gateway.prompt_tokens import build_prompt_counter
from gateway.settings import GatewaySettings
from gateway.spill import check_reachable

# How long shutdown waits for releases still kept for an absent Redis (their leases then
# expire by themselves after the lease ttl).
_LIMITER_DRAIN_S = 3.0


def build_app(settings: GatewaySettings) -> GatewayApp:
    check_reachable(settings.spill)  # SpillError: before anything is opened
    registry = CollectorRegistry()
    ProcessCollector(namespace="vkit_gateway", registry=registry)  # RSS, CPU seconds
    metrics = GatewayMetrics(registry)
    closers: list[Callable[[], Awaitable[object]]] = []
    limiter = build_limiter(settings, metrics, closers)
    key_store = build_key_store(settings, metrics)
    ledger = build_ledger(settings)
    if ledger is not None:
        store = key_store
        registry.register(LedgerCollector(ledger, lambda: store.keys if store else ()))
    return create_app(
        settings,
        key_store=key_store,
        limiter=limiter,
        metrics=metrics,
        on_shutdown=closers,
        background=[key_store.run_forever] if key_store is not None else [],
        prompt_counter=build_prompt_counter(settings.tokenizers),
        ledger=ledger,
    )


def build_ledger(settings: GatewaySettings) -> Ledger | None:
    """The usage ledger, its database migrated (an unreachable one raises
    :class:`gateway.ledger.LedgerError` here, before anything is served); ``None`` when off."""
    url = settings.ledger_url
    if url is None:
        return None
    section = settings.ledger
    ledger = Ledger(
        open_store(url),
        flush_interval=section.flush_interval,
        budget_refresh=section.budget_refresh,
        max_backlog_rows=section.max_backlog_rows,
        prices=section.prices,
    )
    ledger.start()
    return ledger


def build_key_store(settings: GatewaySettings, metrics: GatewayMetrics) -> KeyStore | None:
    if settings.keys_file is None:
        return None
    return KeyStore(settings.keys_file, clock=time.monotonic, metrics=metrics)


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
        memory: LimiterLike = MemoryLimiter(
            clock=time.monotonic, default_concurrency=settings.default_key_concurrency
        )
        return memory
    import redis.asyncio

    from gateway.limits import RedisLimiter

    client = redis.asyncio.from_url(settings.redis_url)
    shared = RedisLimiter(  # Redis's TIME: one clock for every gateway
        client,
        on_backend_error="allow" if settings.redis_fail_open else "deny",
        backend_errors=metrics.limiter_backend_errors,
        resets=metrics.limiter_resets,
        leases_lost=metrics.limiter_leases_lost,
        default_concurrency=settings.default_key_concurrency,
        lease_ttl=settings.timeouts.total + 60,  # a crashed gateway's slots expire after
    )
    # The last undos and releases (bounded: Redis may be away at shutdown), then close.
    closers.extend([functools.partial(shared.drain, within=_LIMITER_DRAIN_S), client.aclose])
    return shared
