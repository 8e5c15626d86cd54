"""The request path's metrics render exactly as prometheus_client's own kinds rendered them.

:mod:`gateway.loop_metrics` replaced prometheus_client's Counter/Histogram/Gauge for the
metrics written on every request; a scrape must not see the difference. Each test drives the
same calls through the gateway's metrics and through prometheus_client metrics defined as
they shipped before (name, help, label names, buckets), and compares what a scrape reads:
the families, their samples in order, and both exposition formats. ``_created`` samples hold
the time each series was made, so their values are compared to the clock, not to each other.
"""

from __future__ import annotations

import gc
import math
import re
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from gateway.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from gateway.metrics import GatewayMetrics

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

# Every family of the gateway's registry, in the order a scrape lists them (as shipped).
FAMILY_ORDER = [
    "vkit_gateway_requests",
    "vkit_gateway_request_duration_seconds",
    "vkit_gateway_time_to_first_token_seconds",
    "vkit_gateway_overhead_seconds",
    "vkit_gateway_tokens",
    "vkit_gateway_rate_limited",
    "vkit_gateway_in_flight_requests",
    "vkit_gateway_upstream_up",
    "vkit_gateway_upstream_errors",
    "vkit_gateway_usage_missing",
    "vkit_gateway_limiter_backend_errors",
    "vkit_gateway_limiter_resets",
    "vkit_gateway_limiter_leases_lost",
    "vkit_gateway_keys_loaded",
    "vkit_gateway_keys_reload_refused",
    "vkit_gateway_client_write_timeouts",
    "vkit_gateway_canary_seconds",
    "vkit_gateway_canary_failures",
    "vkit_gateway_routing_decisions",
    "vkit_gateway_routing_overloaded",
    "vkit_gateway_replica_score",
    "vkit_gateway_replica_scrape_failures",
    "vkit_gateway_held_requests",
    "vkit_gateway_hold_seconds",
    "vkit_gateway_hold_refused",
    "vkit_gateway_upstream_refused",
    "vkit_gateway_spill_up",
    "vkit_gateway_spilled_requests",
    "vkit_gateway_spilled_tokens",
]


def shipped(registry: CollectorRegistry) -> SimpleNamespace:
    """The request path's metrics as prometheus_client metrics, defined as they shipped."""
    p = "vkit_gateway_"
    r = registry
    return SimpleNamespace(
        requests=Counter(
            p + "requests", "Requests answered", ["key", "model", "status"], registry=r
        ),
        request_duration=Histogram(
            p + "request_duration_seconds",
            "Whole request duration",
            ["key", "model"],
            buckets=LATENCY,
            registry=r,
        ),
        time_to_first_token=Histogram(
            p + "time_to_first_token_seconds",
            "Time until the first body byte was sent to the client",
            ["model"],
            buckets=LATENCY,
            registry=r,
        ),
        overhead=Histogram(
            p + "overhead_seconds",
            "Time per request not spent waiting on the upstream",
            buckets=OVERHEAD,
            registry=r,
        ),
        tokens=Counter(p + "tokens", "Tokens by key", ["key", "direction"], registry=r),
        rate_limited=Counter(
            p + "rate_limited", "Rate-limit rejections", ["key", "reason"], registry=r
        ),
        in_flight=Gauge(p + "in_flight_requests", "Requests being served", registry=r),
        usage_missing=Counter(
            p + "usage_missing",
            "Answers without usable usage, billed their reservation",
            ["key"],
            registry=r,
        ),
        routing_decisions=Counter(
            p + "routing_decisions",
            "The aware router's choices, by reason",
            ["reason"],
            registry=r,
        ),
    )


def requests_through_gateway_metrics(m: GatewayMetrics) -> None:
    """A handful of requests' samples, through the calls the request path makes."""
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.dec()
    m.count_tokens("alice", 25, 16)
    m.count_tokens("bob", 0, 3)
    m.count_tokens("alice", 7, 0)
    m.exchange_done(model="m1", time_to_first_byte=0.0042, overhead=0.00018)
    m.exchange_done(model="m1", time_to_first_byte=None, overhead=-1.0)
    m.exchange_done(model="other", time_to_first_byte=0.5, overhead=0.25)
    m.answered("alice", "m1", 200, 0.0045)
    m.answered("alice", "m1", 200, 1.0)  # on a bucket's bound
    m.answered("unauthenticated", "none", 401, 0.25)
    m.answered("bob", "m1", 499, 400.0)  # past the last bound: +Inf only
    m.rate_limited.labels("alice", "tokens").inc()
    m.usage_missing.labels("alice").inc()
    m.routing_decisions.labels("affinity").inc()
    m.routing_decisions.labels("affinity").inc()
    m.routing_decisions.labels("least_loaded").inc()


def the_same_through_prometheus_client(s: SimpleNamespace) -> None:
    """What :func:`requests_through_gateway_metrics` recorded, as the shipped code recorded it."""
    s.in_flight.inc()
    s.in_flight.inc()
    s.in_flight.dec()
    s.tokens.labels("alice", "prompt").inc(25)
    s.tokens.labels("alice", "completion").inc(16)
    s.tokens.labels("bob", "completion").inc(3)
    s.tokens.labels("alice", "prompt").inc(7)
    s.time_to_first_token.labels("m1").observe(0.0042)
    s.overhead.observe(0.00018)
    s.overhead.observe(0.0)
    s.time_to_first_token.labels("other").observe(0.5)
    s.overhead.observe(0.25)
    for key, model, status, duration in (
        ("alice", "m1", 200, 0.0045),
        ("alice", "m1", 200, 1.0),
        ("unauthenticated", "none", 401, 0.25),
        ("bob", "m1", 499, 400.0),
    ):
        s.requests.labels(key, model, str(status)).inc()
        s.request_duration.labels(key, model).observe(duration)
    s.rate_limited.labels("alice", "tokens").inc()
    s.usage_missing.labels("alice").inc()
    s.routing_decisions.labels("affinity").inc()
    s.routing_decisions.labels("affinity").inc()
    s.routing_decisions.labels("least_loaded").inc()


Render = Callable[[CollectorRegistry], bytes]


class Families(Collector):
    """Families collected elsewhere, served as they are."""

    def __init__(self, collected: list[Metric]) -> None:
        self.collected = collected

    def collect(self) -> list[Metric]:
        return self.collected


def families(registry: CollectorRegistry, names: set[str]) -> list[Metric]:
    return [family for family in registry.collect() if family.name in names]


def without_created_values(family: Metric, since: float, until: float) -> Metric:
    """``family`` with each ``_created`` value checked against the clock and set to 0."""
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    for sample in family.samples:
        if sample.name.endswith("_created"):
            assert since <= sample.value <= until, sample
            sample = sample._replace(value=0.0)
        copy.samples.append(sample)
    return copy


_CREATED_VALUE = re.compile(rb"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def masked(exposition: bytes) -> bytes:
    return _CREATED_VALUE.sub(rb"\1 T", exposition)


def test_the_gateway_scrape_lists_its_families_in_the_order_it_did() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    assert [family.name for family in registry.collect()] == FAMILY_ORDER


def test_the_request_paths_metrics_render_as_prometheus_clients_did() -> None:
    since = time.time()
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = GatewayMetrics(ours)
    requests_through_gateway_metrics(metrics)
    the_same_through_prometheus_client(shipped(theirs))
    until = time.time()
    hot = {family.name for family in theirs.collect()}
    got = [without_created_values(f, since, until) for f in families(ours, hot)]
    want = [without_created_values(f, since, until) for f in families(theirs, hot)]
    assert [f.name for f in got] == [f.name for f in want]
    for ours_family, their_family in zip(got, want, strict=True):
        assert ours_family == their_family, ours_family.name
    assert len(got) == 9 and sum(len(f.samples) for f in got) > 100  # the comparison saw them


@pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
def test_the_scrape_text_is_byte_for_byte_what_it_was(render: Render) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    requests_through_gateway_metrics(GatewayMetrics(ours))
    the_same_through_prometheus_client(shipped(theirs))
    hot = {family.name for family in theirs.collect()}

    only_hot = CollectorRegistry()  # the gateway's request-path families, in their order
    only_hot.register(Families(families(ours, hot)))
    text = masked(render(only_hot))
    assert text == masked(render(theirs))
    assert b'vkit_gateway_requests_total{key="alice",model="m1",status="200"} 2.0' in text
    assert b'vkit_gateway_request_duration_seconds_bucket{key="alice",le="1.0",model="m1"} 2.0' in (
        text
    )


def test_created_series_follow_prometheus_clients_switch() -> None:
    registry = CollectorRegistry()
    LoopCounter("c", "help", ("k",), registry).labels("a").inc()
    LoopHistogram("h", "help", (), (1.0,), registry).labels().observe(0.5)
    prometheus_metrics.disable_created_metrics()
    try:
        names = {s.name for family in registry.collect() for s in family.samples}
    finally:
        prometheus_metrics.enable_created_metrics()
    assert names == {"c_total", "h_bucket", "h_count", "h_sum"}
    names = {s.name for family in registry.collect() for s in family.samples}
    assert {"c_created", "h_created"} <= names


def twins(kind: str) -> tuple[CollectorRegistry, Any, CollectorRegistry, Any]:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    if kind == "counter":
        return (
            ours,
            LoopCounter("x", "h", ("a",), ours),
            theirs,
            Counter("x", "h", ["a"], registry=theirs),
        )
    if kind == "gauge":
        return ours, LoopGauge("x", "h", (), ours), theirs, Gauge("x", "h", registry=theirs)
    bounds = (-1.0, 0.0, 0.5, 1e7, 2.5e9)
    return (
        ours,
        LoopHistogram("x", "h", ("a",), bounds, ours),
        theirs,
        Histogram("x", "h", ["a"], buckets=bounds, registry=theirs),
    )


@pytest.mark.parametrize(
    ("kind", "calls"),
    [
        ("counter", [("a", 1), ("a", 2.5), (7, 1), ("7", 3), ("b", 0)]),
        ("gauge", [(None, 1), (None, -3.5), (None, 0.25)]),
        ("histogram", [("a", -5), ("a", -1), ("a", 0), (3, 0.5), ("3", 1e7 + 1), ("a", math.inf)]),
        ("histogram", [("a", math.nan), ("a", 0.1)]),  # NaN: summed, in no bucket
    ],
)
def test_each_kind_renders_as_its_prometheus_client_twin(
    kind: str, calls: list[tuple[object, float]]
) -> None:
    """Edge values too: label values that are not strings, bounds and values where the
    bucket search could differ, a float ``le`` that Go formats with an exponent."""
    ours, our_metric, theirs, their_metric = twins(kind)
    for label, value in calls:
        for metric in (our_metric, their_metric):
            if kind == "gauge":
                metric.inc(value)
            elif kind == "counter":
                metric.labels(label).inc(value)
            else:
                metric.labels(label).observe(value)
    for render in (generate_latest, generate_openmetrics):
        assert masked(render(ours)) == masked(render(theirs))


def test_a_counter_refuses_to_go_down_as_prometheus_client_does() -> None:
    counter = LoopCounter("x", "h", ("a",), CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match="label count"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="sorted"):
        LoopHistogram("y", "h", (), (2.0, 1.0), CollectorRegistry())


def test_a_family_registered_twice_is_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    LoopCounter("x", "h", (), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("x", "h", registry=registry)


def test_a_scrape_from_another_thread_sees_every_series_while_new_ones_come() -> None:
    """Only the loop writes; a scrape may run elsewhere (a test thread, a future admin
    thread): it copies the series it walks, so new series mid-scrape raise nothing."""
    registry = CollectorRegistry()
    tokens = LoopCounter("x", "h", ("key",), registry)
    histogram = LoopHistogram("y", "h", ("key",), (1.0, 2.0), registry)
    scraped: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                scraped.append(len(generate_latest(registry)))
            except BaseException as exc:  # the failure this test looks for
                failures.append(exc)
                return

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for n in range(20_000):
            tokens.labels(f"k{n}").inc()
            histogram.labels(f"k{n % 500}").observe(1.5)
    finally:
        stop.set()
        reader.join()
    assert failures == [] and len(scraped) > 1
    assert registry.get_sample_value("x_total", {"key": "k19999"}) == 1.0
    assert registry.get_sample_value("y_count", {"key": "k0"}) == 40.0


def test_a_scrape_copies_the_series_before_code_the_garbage_collector_runs_can_add_one() -> None:
    """The thread test's rare failure, made certain: a scrape that builds its copy item by item
    allocates a tuple per series; past the tuple free list an allocation may start a
    collection, and the Python code a collection runs (finalizers, ``gc.callbacks``) is where
    another thread gets the interpreter and adds a series. Here a ``gc.callbacks`` hook is that
    other thread, and a collection runs at every allocation."""
    registry = CollectorRegistry()
    tokens = LoopCounter("x", "h", ("key",), registry)
    for n in range(5_000):  # more than the interpreter keeps free pairs for
        tokens.labels(f"k{n}").inc()
    added: list[object] = []
    scraping = False

    def writer(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and scraping:
            added.append(tokens.labels(f"new{len(added)}"))

    threshold = gc.get_threshold()
    gc.callbacks.append(writer)
    gc.set_threshold(1)
    try:
        scraping = True
        text = generate_latest(registry).decode()
    finally:
        scraping = False
        gc.set_threshold(*threshold)
        gc.callbacks.remove(writer)
    assert added  # the hook did add series during the scrape
    assert all(f'x_total{{key="k{n}"}} 1.0' in text for n in range(5_000))
