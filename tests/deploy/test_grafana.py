"""The Grafana dashboard and provisioning: valid, and every query reads real metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.ledger import LedgerCollector
from gateway.metrics import GatewayMetrics
from tests.deploy.promql_names import base_name, metric_names
from tests.gateway.ledger_stores import a_ledger

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vkit.json"
RULES = [DEPLOY / "monitoring" / "rules" / "vkit.rules.yml"]
RULES += [DEPLOY / "docker" / "prometheus" / "cost.rules.yml"]

# vLLM V1 names (docs/vllm-server.md#metric-names); histograms by their base name.
VLLM_METRICS = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:request_success_total", "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
    "process_start_time_seconds",  # prometheus_client's process collector, API server
}  # fmt: skip
REMOVED_VLLM_METRICS = {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"}
DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
DCGM_METRICS |= {"DCGM_FI_DEV_XID_ERRORS"}
# Profiling: on datacenter GPUs, once enabled in the exporter's counters (its
# etc/default-counters.csv lists it commented out): docs/monitoring.md#saturation.
DCGM_METRICS |= {"DCGM_FI_PROF_SM_ACTIVE"}
KUBE_STATE_METRICS = {"kube_statefulset_replicas"}  # kube-state-metrics, Kubernetes only
PROMETHEUS_METRICS = {"up"}


def gateway_metrics() -> set[str]:
    """What the gateway's registry really exposes (base names of histograms too)."""
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    # the usage ledger's collector (a store that is never opened: its names, no values)
    ledger = a_ledger("sqlite:///unused.sqlite3", started=False)
    registry.register(LedgerCollector(ledger, lambda: ()))
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    names.update(
        f"{family.name}_total" for family in registry.collect() if family.type == "counter"
    )
    return names


def recorded_names() -> set[str]:
    names: set[str] = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def rule_expressions() -> list[str]:
    return [
        rule["expr"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def known_metrics() -> set[str]:
    known = VLLM_METRICS | DCGM_METRICS | PROMETHEUS_METRICS | KUBE_STATE_METRICS
    return known | gateway_metrics() | recorded_names()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_dashboard(dashboard: dict[str, Any]) -> None:
    """Panels query the ``datasource`` variable: Grafana's default Prometheus (compose's
    provisioned one, kube-prometheus-stack's own), or any other the viewer picks."""
    assert dashboard["uid"] and dashboard["title"]
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus",
    )  # fmt: skip
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_reads_metrics_that_are_exported(
    source: str, dashboard: dict[str, Any]
) -> None:
    exprs = queries(dashboard) if source == "dashboard" else rule_expressions()
    known = known_metrics()
    unknown = {
        name
        for expr in exprs
        for name in metric_names(expr)
        if name not in known and base_name(name) not in known
    }
    assert not unknown, unknown


def test_the_name_check_catches_a_removed_vllm_metric() -> None:
    names = metric_names(
        'histogram_quantile(0.9, sum by (le) (rate(vllm:gpu_cache_usage_perc{a="b"}[5m])))'
    )
    assert names == {"vllm:gpu_cache_usage_perc"}
    assert not names & known_metrics()
    assert not REMOVED_VLLM_METRICS & known_metrics()


def test_dashboard_covers_load_latency_gpu_keys_and_cost(dashboard: dict[str, Any]) -> None:
    used = {base_name(n) for expr in queries(dashboard) for n in metric_names(expr)}
    assert {
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds", "vllm:generation_tokens_total",
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "vkit_gateway_requests_total",
        "vkit_gateway_rate_limited_total", "vkit:cost_dollars_per_day",
        "vkit_gateway_key_spent_dollars", "vkit_gateway_key_budget_used_ratio",
        "vkit:cost_dollars_per_million_output_tokens",
    } <= used  # fmt: skip


def test_provisioning_points_at_the_mounted_dashboards_and_datasource() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/vkit.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts  # copied from here into the bundle
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "vkit-prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
