"""The running gateway's parts, as one typed object: :class:`RunningGateway`.

    gateway = build_gateway(settings, key_store=store, limiter=limiter)
    app = create_app(...)          # gateway.app: builds one and serves it; app.running is it
    app.running.pool.any_ready     # what the admin app and the tests read

Everything the public app, the admin app and the tests share lives here, typed, instead of
on an untyped ``app.state``: the upstream pool, the gate (admission), the forwarder (the
upstream call, with the spill-over endpoint when one is set), the router and its scrapes, the
hold, the prober, the metrics, the background loops (the ledger's flushes and the spill-over
endpoint's probes among them) and what closes at shutdown.
:meth:`RunningGateway.lifespan` runs the loops and closes the rest, in order, one failure not
stopping the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.admission import Gate, KeyStoreLike, LimiterLike
from gateway.client import UpstreamClient
from gateway.health import UpstreamProber
from gateway.ledger import Ledger
from gateway.limits.in_flight import InFlightLimit
from gateway.metrics import GatewayMetrics
from gateway.prompt_budget import CountBudget
from gateway.prompt_tokens import ByteBound, PromptCounter
from gateway.raw_client import SchemeClient
from gateway.routing import (
    AwareRouter,
    Discovery,
    Hold,
    LoadScraper,
    RoundRobinRouter,
    Router,
    source_of,
)
from gateway.routing.load import Scrape
from gateway.settings import GatewaySettings
from gateway.spill import KeyDirectory, build_spill
from gateway.upstream_call import Forwarder, upstream_headers
from gateway.upstreams import UpstreamPool
from launcher.supervision.readiness import ReadinessCheck

log = logging.getLogger("vkit.gateway")

Loop = Callable[[], Coroutine[Any, Any, None]]
Closer = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningGateway:
    """The parts of one gateway. ``loops`` run for its lifetime beside ``prober``;
    ``closers`` close, in order, what it opened (its clients, then the caller's)."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    clock: Callable[[], float]
    pool: UpstreamPool
    router: Router
    scrapes: Mapping[str, Scrape]  # the aware router's view of each replica's /metrics
    forwarder: Forwarder
    gate: Gate
    prober: UpstreamProber
    loops: tuple[Loop, ...] = ()
    closers: tuple[Closer, ...] = ()

    @property
    def hold(self) -> Hold | None:
        return self.forwarder.hold

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the prober and the loops; at the end stop them and run every closer."""
        task = asyncio.create_task(self.prober.run_forever())
        others = [asyncio.create_task(run()) for run in self.loops]
        try:
            yield
        finally:
            for running in (task, *others):
                running.cancel()
            stop_others = [functools.partial(_stopped, t) for t in others]
            await _close_all([functools.partial(_stopped, task), *stop_others, *self.closers])


def build_gateway(
    settings: GatewaySettings,
    *,
    key_store: KeyStoreLike | None,
    limiter: LimiterLike | None,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
    upstream_client: UpstreamClient | None = None,
    probe_client: UpstreamClient | None = None,
    on_shutdown: Sequence[Closer] = (),
    background: Sequence[Loop] = (),
    prompt_counter: PromptCounter | None = None,
    ledger: Ledger | None = None,
) -> RunningGateway:
    """The gateway's parts (see :func:`gateway.app.create_app` for the arguments)."""
    # A request in flight holds at most one upstream connection: keep the pool above the bound.
    connections = max(1024, (settings.max_in_flight or 0) + 64)
    client = upstream_client or SchemeClient(settings.timeouts.connect, connections)
    probes = probe_client or SchemeClient(
        settings.timeouts.connect, max_connections=2 * len(settings.upstream_urls)
    )
    pool = UpstreamPool(settings.upstream_urls)
    api_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    router, routing_loops, scrapes = _routing(settings, pool, metrics, clock)
    keys = key_store if isinstance(key_store, KeyDirectory) else None
    spilling = build_spill(settings.spill, pool=pool, keys=keys, metrics=metrics, clock=clock)
    spill_parts: tuple[tuple[Loop, ...], tuple[Closer, ...]] = (
        ((spilling[1].run_forever,), (spilling[0].client.aclose,)) if spilling else ((), ())
    )
    forwarder = Forwarder(
        retry=settings.retry,
        timeouts=settings.timeouts,
        upstream_headers=upstream_headers(api_key),
        pool=pool,
        router=router,
        client=client,
        metrics=metrics,
        clock=clock,
        hold=Hold(settings.hold, pool, metrics, clock),
        ledger=ledger,
        spill=spilling[0] if spilling else None,
    )
    gate = _gate(settings, pool, metrics, key_store, limiter, prompt_counter, router, ledger)
    ledger_parts: tuple[tuple[Loop, ...], tuple[Closer, ...]] = (
        ((ledger.run_forever,), (ledger.close,)) if ledger is not None else ((), ())
    )
    check = ReadinessCheck.of(api_key, settings.health.expected_models)
    holding = settings.hold.probe_interval if settings.hold.max_wait else None
    return RunningGateway(
        settings=settings,
        metrics=metrics,
        clock=clock,
        pool=pool,
        router=router,
        scrapes=scrapes,
        forwarder=forwarder,
        gate=gate,
        prober=UpstreamProber(
            settings.health, pool, probes, metrics, check, clock=clock, holding_interval=holding
        ),
        loops=(*background, *routing_loops, *ledger_parts[0], *spill_parts[0]),
        closers=(
            client.aclose,
            probes.aclose,
            *spill_parts[1],
            _closing(gate.count_budget),
            *ledger_parts[1],  # the last flush, once no request is left to record
            *on_shutdown,
        ),
    )


def _closing(budget: CountBudget) -> Closer:
    async def close() -> None:
        budget.close()  # its counting threads

    return close


def _gate(
    settings: GatewaySettings,
    pool: UpstreamPool,
    metrics: GatewayMetrics,
    key_store: KeyStoreLike | None,
    limiter: LimiterLike | None,
    prompt_counter: PromptCounter | None,
    router: Router,
    ledger: Ledger | None,
) -> Gate:
    tokenizers = settings.tokenizers
    fallback = ByteBound.of(tokenizers)
    return Gate(
        caps=settings.caps,
        max_body_bytes=settings.max_body_bytes,
        max_body_values=settings.max_body_values,
        max_body_containers=settings.max_body_containers,
        route_key=router.request_key if settings.routing == "aware" else None,
        allow_anonymous=settings.allow_anonymous,
        upstream_priority=settings.upstream_priority,
        pool=pool,
        metrics=metrics,
        key_store=key_store,
        limiter=limiter,
        budgets=ledger,
        in_flight=InFlightLimit(settings.max_in_flight) if settings.max_in_flight else None,
        prompt_counter=prompt_counter or fallback,
        count_budget=CountBudget(
            seconds=tokenizers.count_budget,
            fallback=fallback,
            inline_bytes=tokenizers.count_inline_bytes,
        ),
    )


def _routing(
    settings: GatewaySettings,
    pool: UpstreamPool,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
) -> tuple[Router, list[Loop], dict[str, Any]]:
    """The router the ``routing`` setting names, the background loops it needs (discovery;
    in aware mode the ``/metrics`` scraper, with a client of its own) and its scrapes."""
    tasks: list[Loop] = []
    source = source_of(settings.discovery)
    if source is not None:
        tasks.append(Discovery(source, pool, settings.discovery.interval, metrics).run_forever)
    if settings.routing == "round_robin":
        return RoundRobinRouter(pool), tasks, {}
    scraper = LoadScraper(
        settings.router, pool, SchemeClient(settings.timeouts.connect, 64), metrics, clock
    )

    async def scrape_forever() -> None:
        try:
            await scraper.run_forever()
        finally:
            await scraper.client.aclose()

    tasks.append(scrape_forever)
    router = AwareRouter(settings.router, pool, scraper.scrapes, clock, metrics)
    return router, tasks, scraper.scrapes


async def _stopped(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_all(closers: Sequence[Closer]) -> None:
    """Await every closer in turn; one that fails is logged and the rest still run."""
    for close in closers:
        try:
            await close()
        except Exception:  # shutdown goes on: the others still hold sockets to close
            log.exception("closing %s at shutdown failed", getattr(close, "__qualname__", "?"))
