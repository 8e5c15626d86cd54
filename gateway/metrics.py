"""The gateway's Prometheus metrics, registered on an injected ``CollectorRegistry``.

Exported names (all prefixed ``vkit_gateway_``; label values are bounded: key *names*,
served model names -- a LoRA adapter is its own ``model`` -- as the upstreams list them
(else ``other``), status codes (499: the client went away), fixed
reason/kind words, upstream ``host:port``):

- ``vkit_gateway_requests_total{key,model,status}`` -- counter, one per answer, whoever gave
  it (counted in one place, :mod:`gateway.accounting`; key ``unauthenticated`` before the key
  is known, ``anonymous`` without one; model ``none`` when the answer names no model)
- ``vkit_gateway_request_duration_seconds{key,model}`` -- histogram, whole request, every answer
- ``vkit_gateway_time_to_first_token_seconds{model}`` -- histogram, first body byte to client
- ``vkit_gateway_overhead_seconds`` -- histogram, time not spent waiting on the upstream
- ``vkit_gateway_tokens_total{key,direction}`` -- counter, direction ``prompt`` | ``completion``
- ``vkit_gateway_usage_missing_total{key}`` -- counter, answers that carried no usable
  ``usage`` (billed the whole reservation; a cut stream, its content events)
- ``vkit_gateway_rate_limited_total{key,reason}`` -- counter, reason ``requests`` | ``tokens`` |
  ``concurrency`` (429s) | ``in_flight`` (the gateway-wide ``max_in_flight``: 503s)
- ``vkit_gateway_in_flight_requests`` -- gauge
- ``vkit_gateway_upstream_up{upstream}`` -- gauge, 1 when the last probe found it ready
- ``vkit_gateway_upstream_errors_total{upstream,kind}`` -- counter, kind ``connect`` |
  ``status`` (502/503) | ``shutting_down`` (vLLM's 500 from a replica shutting down) |
  ``protocol`` (an answer that is not HTTP) | ``dropped`` (closed or reset after the request
  was sent, before an answer) | ``timeout`` | ``stream``
- ``vkit_gateway_client_write_timeouts_total`` -- counter, answers abandoned because the
  client took no write within ``timeouts.client_write`` (it stopped reading)
- ``vkit_gateway_canary_seconds{upstream}`` -- histogram, the readiness canary's one-token
  generation (``health.canary_interval``), failed ones included
- ``vkit_gateway_canary_failures_total{upstream}`` -- counter, canaries that did not generate
- ``vkit_gateway_limiter_backend_errors_total`` -- counter, the shared limiter's store (Redis)
  failed
- ``vkit_gateway_limiter_resets_total`` -- counter, the shared limiter's store restarted or lost
  its data (every key's limits started over)
- ``vkit_gateway_limiter_leases_lost_total`` -- counter, leases that the store no longer knew
  when their request settled (a store reset, or an expired lease)
- ``vkit_gateway_keys_loaded`` -- gauge, API keys in the set being served
- ``vkit_gateway_keys_reload_refused_total{reason}`` -- counter, changed keys files not loaded
  (the last good keys kept): reason ``invalid`` | ``empty`` | ``truncated`` | ``unreadable``
- ``vkit_gateway_routing_decisions_total{reason}`` -- counter, the aware router's choices:
  ``affinity`` (the prefix key's replica) | ``load_spill`` (the next on the ring: the key's
  replica was over the bounded load) | ``least_loaded`` (no prefix key) | ``fallback`` (no
  replica ready: the list's order)
- ``vkit_gateway_routing_overloaded_total`` -- counter, requests refused (503) because every
  ready replica's queue was over ``router.max_waiting``
- ``vkit_gateway_replica_score{upstream}`` -- gauge, the aware router's load score of each
  replica (requests running + waiting, estimated, plus the KV cache's fill 0..1)
- ``vkit_gateway_replica_scrape_failures_total{upstream}`` -- counter, failed ``/metrics``
  scrapes of a replica (its load then falls back to the in-flight count)
- ``vkit_gateway_held_requests`` -- gauge, requests waiting for a ready upstream (``hold``)
- ``vkit_gateway_hold_seconds`` -- histogram, how long held requests waited
- ``vkit_gateway_hold_refused_total{reason}`` -- counter, held requests refused (503):
  reason ``queue_full`` | ``deadline``
- ``vkit_gateway_upstream_refused_total{reason}`` -- counter, requests answered 503 because
  every upstream tried refused them at its admission caps (vLLM's queue full): reason
  ``max_num_queued_reqs`` | ``max_num_queued_tokens`` (the last refusal's)
- ``vkit_gateway_spill_up{backend}`` -- gauge, 1 when the last probe found the spill-over
  endpoint answering (:mod:`gateway.spill`; ``backend``: its configured name)
- ``vkit_gateway_spilled_requests_total{backend,reason}`` -- counter, requests sent to the
  spill-over endpoint: reason ``down`` (no local replica ready) | ``busy`` (the replicas
  answered 503 or were over their queue bound) | ``held`` (the hold queue full or its wait over)
- ``vkit_gateway_spilled_tokens_total{backend,key,direction}`` -- counter, the tokens of the
  spilled requests (also in ``tokens_total``, which counts every backend)

Every ``{upstream}`` series belongs to a replica of the pool: when discovery drops one, its
series go with it (:meth:`GatewayMetrics.keep_upstreams`), so ``upstream_up`` counts only
replicas that are served and the label set does not grow with each pod that came and went.

(With prometheus_client, counters are exposed with the ``_total`` suffix and histograms as
``_bucket``/``_sum``/``_count``.) The metrics every request writes (requests, durations, time
to first token, overhead, tokens, in flight, usage missing, rate limited, routing decisions)
are :mod:`gateway.loop_metrics` kinds: no lock per sample, written on the event loop only,
rendered exactly as prometheus_client's; the rest are prometheus_client's own.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.loop_metrics import (
    CounterValue,
    HistogramValue,
    LoopCounter,
    LoopGauge,
    LoopHistogram,
)

PREFIX = "vkit_gateway_"

METRIC_NAMES: tuple[str, ...] = (
    "vkit_gateway_requests_total",
    "vkit_gateway_request_duration_seconds",
    "vkit_gateway_time_to_first_token_seconds",
    "vkit_gateway_overhead_seconds",
    "vkit_gateway_tokens_total",
    "vkit_gateway_usage_missing_total",
    "vkit_gateway_rate_limited_total",
    "vkit_gateway_in_flight_requests",
    "vkit_gateway_upstream_up",
    "vkit_gateway_upstream_errors_total",
    "vkit_gateway_limiter_backend_errors_total",
    "vkit_gateway_limiter_resets_total",
    "vkit_gateway_limiter_leases_lost_total",
    "vkit_gateway_keys_loaded",
    "vkit_gateway_keys_reload_refused_total",
    "vkit_gateway_client_write_timeouts_total",
    "vkit_gateway_canary_seconds",
    "vkit_gateway_canary_failures_total",
    "vkit_gateway_routing_decisions_total",
    "vkit_gateway_routing_overloaded_total",
    "vkit_gateway_replica_score",
    "vkit_gateway_replica_scrape_failures_total",
    "vkit_gateway_held_requests",
    "vkit_gateway_hold_seconds",
    "vkit_gateway_hold_refused_total",
    "vkit_gateway_upstream_refused_total",
    "vkit_gateway_spill_up",
    "vkit_gateway_spilled_requests_total",
    "vkit_gateway_spilled_tokens_total",
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    """All of the gateway's collectors, created on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # The request path's metrics (gateway.loop_metrics: no lock, written on the loop only).
        self.requests = LoopCounter(
            PREFIX + "requests", "Requests answered", ("key", "model", "status"), registry
        )
        self.request_duration = LoopHistogram(
            PREFIX + "request_duration_seconds",
            "Whole request duration",
            ("key", "model"),
            _LATENCY_BUCKETS,
            registry,
        )
        self.time_to_first_token = LoopHistogram(
            PREFIX + "time_to_first_token_seconds",
            "Time until the first body byte was sent to the client",
            ("model",),
            _LATENCY_BUCKETS,
            registry,
        )
        self.overhead = LoopHistogram(
            PREFIX + "overhead_seconds",
            "Time per request not spent waiting on the upstream",
            (),
            _OVERHEAD_BUCKETS,
            registry,
        )
        self.tokens = LoopCounter(
            PREFIX + "tokens", "Tokens by key", ("key", "direction"), registry
        )
        self.rate_limited = LoopCounter(
            PREFIX + "rate_limited", "Rate-limit rejections", ("key", "reason"), registry
        )
        self.in_flight = LoopGauge(
            PREFIX + "in_flight_requests", "Requests being served", (), registry
        )
        self.upstream_up = Gauge(
            PREFIX + "upstream_up", "1 if the upstream is ready", ["upstream"], registry=registry
        )
        self.upstream_errors = Counter(
            PREFIX + "upstream_errors",
            "Upstream failures",
            ["upstream", "kind"],
            registry=registry,
        )
        self.usage_missing = LoopCounter(
            PREFIX + "usage_missing",
            "Answers without usable usage, billed their reservation",
            ("key",),
            registry,
        )
        self.limiter_backend_errors = Counter(
            PREFIX + "limiter_backend_errors",
            "Failures of the shared limiter's backend (Redis)",
            registry=registry,
        )
        self.limiter_resets = Counter(
            PREFIX + "limiter_resets",
            "Restarts or data losses of the shared limiter's store (limits started over)",
            registry=registry,
        )
        self.limiter_leases_lost = Counter(
            PREFIX + "limiter_leases_lost",
            "Leases the shared limiter's store no longer knew when their request settled",
            registry=registry,
        )
        self.keys_loaded = Gauge(PREFIX + "keys_loaded", "API keys being served", registry=registry)
        self.keys_reload_refused = Counter(
            PREFIX + "keys_reload_refused",
            "Changed keys files not loaded (the last good keys kept)",
            ["reason"],
            registry=registry,
        )
        self.client_write_timeouts = Counter(
            PREFIX + "client_write_timeouts",
            "Answers abandoned: the client took no write within timeouts.client_write",
            registry=registry,
        )
        self.canary_seconds = Histogram(
            PREFIX + "canary_seconds",
            "Duration of the readiness canary's one-token generation",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.canary_failures = Counter(
            PREFIX + "canary_failures",
            "Readiness canaries that did not generate",
            ["upstream"],
            registry=registry,
        )
        self.routing_decisions = LoopCounter(
            PREFIX + "routing_decisions",
            "The aware router's choices, by reason",
            ("reason",),
            registry,
        )
        self.routing_overloaded = Counter(
            PREFIX + "routing_overloaded",
            "Requests refused: every ready replica's queue was over the bound",
            registry=registry,
        )
        self.replica_score = Gauge(
            PREFIX + "replica_score",
            "The aware router's load score of each replica",
            ["upstream"],
            registry=registry,
        )
        self.replica_scrape_failures = Counter(
            PREFIX + "replica_scrape_failures",
            "Failed /metrics scrapes of a replica",
            ["upstream"],
            registry=registry,
        )
        self.held_requests = Gauge(
            PREFIX + "held_requests", "Requests waiting for a ready upstream", registry=registry
        )
        self.hold_seconds = Histogram(
            PREFIX + "hold_seconds",
            "How long held requests waited for a ready upstream",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.hold_refused = Counter(
            PREFIX + "hold_refused",
            "Held requests refused: queue full or deadline passed",
            ["reason"],
            registry=registry,
        )
        self.upstream_refused = Counter(
            PREFIX + "upstream_refused",
            "Requests refused by every upstream tried at its admission caps (vLLM's queue full)",
            ["reason"],
            registry=registry,
        )
        self.spill_up = Gauge(
            PREFIX + "spill_up",
            "1 if the spill-over endpoint answered its last probe",
            ["backend"],
            registry=registry,
        )
        self.spilled_requests = Counter(
            PREFIX + "spilled_requests",
            "Requests sent to the spill-over endpoint, by reason",
            ["backend", "reason"],
            registry=registry,
        )
        self.spilled_tokens = Counter(
            PREFIX + "spilled_tokens",
            "Tokens of the requests the spill-over endpoint served",
            ["backend", "key", "direction"],
            registry=registry,
        )

        # The collectors labelled by upstream, with their label names in order.
        self._per_upstream: tuple[tuple[Any, tuple[str, ...]], ...] = (
            (self.upstream_up, ("upstream",)),
            (self.upstream_errors, ("upstream", "kind")),
            (self.canary_seconds, ("upstream",)),
            (self.canary_failures, ("upstream",)),
            (self.replica_score, ("upstream",)),
            (self.replica_scrape_failures, ("upstream",)),
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._answer_children: dict[tuple[str, str, int], tuple[CounterValue, HistogramValue]] = {}
        self._overhead = self.overhead.labels()  # its one series: a call less per request

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path records ~6 samples a request."""
        cache_key = (metric._name, *labels)
        child = self._children.get(cache_key)
        if child is None:
            child = self._children[cache_key] = metric.labels(*labels)
        return child

    def keep_upstreams(self, labels: set[str]) -> int:
        """Remove every per-upstream series whose upstream is not in ``labels`` (the pool's
        labels now); how many were removed. Off the request path: discovery calls it after
        each look-up, so a series a late probe or request wrote for a dropped replica goes too.
        """
        removed = 0
        for metric, names in self._per_upstream:
            present = {
                tuple(sample.labels[name] for name in names)
                for family in metric.collect()
                for sample in family.samples
            }
            for values in present:
                if values[0] not in labels:
                    metric.remove(*values)
                    removed += 1
        return removed

    def count_tokens(self, key: str, prompt: int, completion: int) -> None:
        if prompt:
            self.tokens.labels(key, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(key, "completion").inc(completion)

    def count_spilled_tokens(self, backend: str, key: str, prompt: int, completion: int) -> None:
        """A spilled request's tokens, under its backend's label."""
        if prompt:
            self._child(self.spilled_tokens, backend, key, "prompt").inc(prompt)
        if completion:
            self._child(self.spilled_tokens, backend, key, "completion").inc(completion)

    def answered(self, key: str, model: str, status: int, duration: float) -> None:
        """One answer: its count and its duration (the accounting middleware's two samples)."""
        children = self._answer_children.get((key, model, status))
        if children is None:
            children = (
                self.requests.labels(key, model, str(status)),
                self.request_duration.labels(key, model),
            )
            self._answer_children[(key, model, status)] = children
        children[0].inc()
        children[1].observe(duration)

    def exchange_done(
        self, *, model: str, time_to_first_byte: float | None, overhead: float
    ) -> None:
        """What only the exchange knows: time to the first byte and the gateway's overhead."""
        if time_to_first_byte is not None:
            self.time_to_first_token.labels(model).observe(time_to_first_byte)
        self._overhead.observe(max(overhead, 0.0))
