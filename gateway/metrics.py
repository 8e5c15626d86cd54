"""The gateway's Prometheus metrics, registered on an injected ``CollectorRegistry``.

Exported names (all prefixed ``vkit_gateway_``; label values are bounded: key *names*,
served model names (else ``other``), status codes (499: the client went away), fixed
reason/kind words, upstream ``host:port``):

- ``vkit_gateway_requests_total{key,model,status}`` -- counter, one per answered request
- ``vkit_gateway_request_duration_seconds{model}`` -- histogram, whole request
- ``vkit_gateway_time_to_first_token_seconds{model}`` -- histogram, first body byte to client
- ``vkit_gateway_overhead_seconds`` -- histogram, time not spent waiting on the upstream
- ``vkit_gateway_tokens_total{key,direction}`` -- counter, direction ``prompt`` | ``completion``
- ``vkit_gateway_rate_limited_total{key,reason}`` -- counter, reason ``requests`` | ``tokens`` |
  ``concurrency``
- ``vkit_gateway_in_flight_requests`` -- gauge
- ``vkit_gateway_upstream_up{upstream}`` -- gauge, 1 when the last probe found it ready
- ``vkit_gateway_upstream_errors_total{upstream,kind}`` -- counter, kind ``connect`` |
  ``status`` (502/503) | ``timeout`` | ``stream``
- ``vkit_gateway_limiter_backend_errors_total`` -- counter, the shared limiter's store (Redis)
  failed

(With prometheus_client, counters are exposed with the ``_total`` suffix and histograms as
``_bucket``/``_sum``/``_count``.)
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "vkit_gateway_"

METRIC_NAMES: tuple[str, ...] = (
    "vkit_gateway_requests_total",
    "vkit_gateway_request_duration_seconds",
    "vkit_gateway_time_to_first_token_seconds",
    "vkit_gateway_overhead_seconds",
    "vkit_gateway_tokens_total",
    "vkit_gateway_rate_limited_total",
    "vkit_gateway_in_flight_requests",
    "vkit_gateway_upstream_up",
    "vkit_gateway_upstream_errors_total",
    "vkit_gateway_limiter_backend_errors_total",
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    """All of the gateway's collectors, created on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            PREFIX + "requests", "Requests answered", ["key", "model", "status"], registry=registry
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Whole request duration",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time until the first body byte was sent to the client",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            PREFIX + "overhead_seconds",
            "Time per request not spent waiting on the upstream",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            PREFIX + "tokens", "Tokens by key", ["key", "direction"], registry=registry
        )
        self.rate_limited = Counter(
            PREFIX + "rate_limited", "Rate-limit rejections", ["key", "reason"], registry=registry
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests", "Requests being served", registry=registry
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
        self.limiter_backend_errors = Counter(
            PREFIX + "limiter_backend_errors",
            "Failures of the shared limiter's backend (Redis)",
            registry=registry,
        )

        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path records ~6 samples a request."""
        cache_key = (metric._name, *labels)
        child = self._children.get(cache_key)
        if child is None:
            child = self._children[cache_key] = metric.labels(*labels)
        return child

    def count_tokens(self, key: str, prompt: int, completion: int) -> None:
        if prompt:
            self._child(self.tokens, key, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens, key, "completion").inc(completion)

    def request_done(
        self,
        *,
        key: str,
        model: str,
        status: int,
        duration: float,
        time_to_first_byte: float | None,
        overhead: float,
    ) -> None:
        self._child(self.requests, key, model, str(status)).inc()
        self._child(self.request_duration, model).observe(duration)
        if time_to_first_byte is not None:
            self._child(self.time_to_first_token, model).observe(time_to_first_byte)
        self.overhead.observe(max(overhead, 0.0))
