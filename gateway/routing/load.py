"""What each replica is doing: vLLM's own gauges, scraped, and this gateway's in-flight
count, combined into one load figure per replica. Pure: the clock is passed in.

vLLM 0.32's V1 engine exports (``vllm/v1/metrics/loggers.py``, labels ``model_name`` and
``engine``; summed over engines): ``vllm:num_requests_running``,
``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` (0..1).

A scrape is a snapshot; what changed since is seen by the gateway's own count, which is
exact. So a replica's load is its scraped ``running + waiting`` plus the change in this
gateway's in-flight count since the scrape (``in_flight - in_flight_at_scrape``: up by the
requests sent since, down by those finished since), never below this gateway's own
``in_flight``: other gateways' traffic comes from the scrape, bursts between scrapes (and
the end of this gateway's requests) from the count. Its queue is the scraped ``waiting``
plus the requests sent since (a bound for overload: the sends may have started). A
scrape older than ``stale_after`` (or none) counts for nothing: the load is the in-flight
count alone. The score adds the KV cache's fill
(0..1), a tie-breaker between equally loaded replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
_GAUGES = (RUNNING, WAITING, KV_USAGE)


@dataclass(frozen=True, slots=True)
class Scrape:
    """One replica's gauges at ``at`` (the router's clock), and this gateway's in-flight
    count on it at that moment."""

    running: float
    waiting: float
    kv_usage: float
    at: float
    in_flight_at: int = 0


def parse_vllm_gauges(text: str) -> dict[str, float] | None:
    """The three gauges from a Prometheus text page (each summed over its label sets);
    ``None`` when the page has none of them (not a vLLM ``/metrics``)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        for name in _GAUGES:
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                try:
                    value = float(line.rsplit(None, 1)[-1])
                except ValueError:
                    break
                found[name] = found.get(name, 0.0) + value
                break
    if not found:
        return None
    return {name: found.get(name, 0.0) for name in _GAUGES}


@dataclass(frozen=True, slots=True)
class LoadView:
    """How the router sees one replica now."""

    load: float  # requests running + waiting (estimated)
    waiting: float | None  # its queue, when a fresh scrape says; None: unknown
    score: float  # load + KV fill: lower is better
    fresh: bool


def view(scrape: Scrape | None, in_flight: int, now: float, stale_after: float) -> LoadView:
    """Combine the last scrape (if fresh) with this gateway's in-flight count."""
    if scrape is None or now - scrape.at > stale_after:
        return LoadView(load=float(in_flight), waiting=None, score=float(in_flight), fresh=False)
    change = in_flight - scrape.in_flight_at
    load = max(scrape.running + scrape.waiting + change, float(in_flight))
    return LoadView(
        load=load,
        waiting=scrape.waiting + max(change, 0),
        score=load + scrape.kv_usage,
        fresh=True,
    )
