"""What recording one request's metrics costs: the calls the request path makes, timed alone.

One answered request records, on :class:`gateway.metrics.GatewayMetrics`: the in-flight gauge
up and down (the exchange), its prompt and completion tokens (billing), its time to first
byte and overhead (the exchange), its count and duration (the accounting middleware). This
times exactly those calls, with the label values of a warm gateway (every child exists), so
an A/B of the metrics module is not lost in the rest of the request's noise:

    PYTHONPATH=OLD_TREE .venv/bin/python bench/metric_calls.py
    PYTHONPATH=NEW_TREE .venv/bin/python bench/metric_calls.py

Prints nanoseconds per request (best of ``--repeat`` runs of ``--number`` requests).
"""

from __future__ import annotations

import argparse
import timeit

from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics


def one_request(metrics: GatewayMetrics) -> None:
    """The metric calls of one answered, metered request (non-stream or stream alike)."""
    metrics.in_flight.inc()
    metrics.in_flight.dec()
    metrics.count_tokens("bench", 25, 16)
    metrics.exchange_done(model="bench", time_to_first_byte=0.0042, overhead=0.00018)
    metrics.answered("bench", "bench", 200, 0.0045)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    metrics = GatewayMetrics(CollectorRegistry())
    one_request(metrics)  # the children exist, as in a warm gateway
    runs = timeit.repeat(lambda: one_request(metrics), number=args.number, repeat=args.repeat)
    per_request = [run / args.number * 1e9 for run in runs]
    print(
        f"metric calls: {min(per_request):.0f} ns/request "
        f"(best of {args.repeat}; worst {max(per_request):.0f})"
    )


if __name__ == "__main__":
    main()
