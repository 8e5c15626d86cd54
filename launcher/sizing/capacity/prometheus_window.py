"""Read a deployment's last window from its Prometheus (HTTP API ``/api/v1/query_range``).

    with httpx.Client(base_url="http://prometheus:9090", timeout=10) as client:
        window = read_window(client, window_s=3600)

The queries are the ones :mod:`launcher.sizing.capacity.measured` documents; every series is
summed over the fleet, sampled at the same steps, and aligned on the running-requests series.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from launcher.errors import MetricsError
from launcher.sizing.capacity.measured import MeasuredWindow

QUERIES: dict[str, str] = {
    "running": "sum(vllm:num_requests_running)",
    "waiting": "sum(vllm:num_requests_waiting)",
    "output_tok_s": "sum(rate(vllm:generation_tokens_total[1m]))",
    "requests_s": "sum(rate(vllm:request_success_total[1m]))",
    "gpu_util": "avg(DCGM_FI_DEV_GPU_UTIL)",
    "gpus": "count(DCGM_FI_DEV_GPU_UTIL)",
}
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """``1h`` -> 3600, ``30m`` -> 1800; ValueError for anything else or zero."""
    found = _DURATION.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise ValueError(f"--window: expected a duration like 30m or 1h, got {text!r}")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


def _range(client: httpx.Client, query: str, start: float, end: float, step: int) -> list[Any]:
    try:
        response = client.get(
            "/api/v1/query_range",
            params={"query": query, "start": start, "end": end, "step": step},
        )
    except httpx.HTTPError as exc:
        raise MetricsError(f"cannot read Prometheus at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        raise MetricsError(
            f"Prometheus at {client.base_url} answered {response.status_code} to {query!r}: "
            f"{response.text[:200]}"
        )
    result = response.json().get("data", {}).get("result", [])
    return result[0]["values"] if result else []


def read_window(
    client: httpx.Client, *, window_s: int, end: float | None = None, step_s: int | None = None
) -> MeasuredWindow:
    """The last ``window_s`` seconds up to ``end`` (default: now)."""
    end = time.time() if end is None else end
    start = end - window_s
    step = step_s or max(15, window_s // 240)
    values = {name: _range(client, q, start, end, step) for name, q in QUERIES.items()}
    if not values["running"]:
        raise MetricsError(
            f"no vllm:num_requests_running in the last {window_s} s at {client.base_url}: "
            "is it scraping the vLLM replicas?"
        )
    if not values["gpu_util"]:
        raise MetricsError(
            f"no DCGM_FI_DEV_GPU_UTIL in the last {window_s} s at {client.base_url}: "
            "is it scraping NVIDIA's DCGM exporter?"
        )
    steps = [float(ts) for ts, _ in values["running"]]
    aligned = {name: _aligned(series, steps) for name, series in values.items() if name != "gpus"}
    gpus = int(max(float(v) for _, v in values["gpus"]))
    return MeasuredWindow(**aligned, gpus=gpus, window=f"{window_s} s")


def _aligned(series: list[Any], steps: list[float]) -> list[float]:
    """Values at ``steps``; a step the series lacks (no traffic yet) counts as 0."""
    by_time = {float(ts): float(value) for ts, value in series}
    return [by_time.get(ts, 0.0) for ts in steps]
