"""Prometheus files for a deployment: the scrape config and the GPU price series.

Alerts and recording rules are static (``deploy/monitoring/rules/``); what depends on the
box -- which replicas to scrape, where Alertmanager listens, what each GPU costs per hour --
is rendered here.
``vkit:gpu_price_dollars_per_hour{gpu,gpu_type}`` feeds the cost recording rules and the
Grafana cost panels; its values come from ``configs/gpus.yaml``.
"""

from __future__ import annotations

from typing import Any

RULES_DIR_IN_CONTAINER = "rules"  # relative to prometheus.yml
COST_RULES_FILE = "cost.rules.yml"


def build_prometheus_config(
    replica_targets: list[str],
    gateway_target: str,
    dcgm_target: str | None,
    *,
    alertmanager_target: str | None = None,
    scrape_interval_s: int = 15,
) -> dict[str, Any]:
    """``prometheus.yml``: gateway, each replica, the DCGM exporter, Prometheus itself.

    ``gateway_target`` is the gateway's admin listener (``admin_host:admin_port``): its
    public port serves no ``/metrics``.

    Rule files are relative to the config file: ``cost.rules.yml`` beside it and the
    static alerts under ``rules/``. Firing alerts go to ``alertmanager_target``
    (``host:port``); without one they show in Prometheus' UI only.
    """
    jobs: list[dict[str, Any]] = [
        {"job_name": "vkit-gateway", "static_configs": [{"targets": [gateway_target]}]},
        {"job_name": "vllm", "static_configs": [{"targets": list(replica_targets)}]},
    ]
    if dcgm_target is not None:
        jobs.append({"job_name": "dcgm", "static_configs": [{"targets": [dcgm_target]}]})
    jobs.append({"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]})
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": f"{scrape_interval_s}s",
            "evaluation_interval": f"{scrape_interval_s}s",
        },
        "rule_files": [COST_RULES_FILE, f"{RULES_DIR_IN_CONTAINER}/*.yml"],
    }
    if alertmanager_target is not None:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager_target]}]}]
        }
    config["scrape_configs"] = jobs
    return config


def build_cost_rules(gpu_ids: list[str], gpu_type: str, price_per_hour: float) -> dict[str, Any]:
    """One constant series per GPU: ``vkit:gpu_price_dollars_per_hour{gpu=ID,gpu_type=T}``."""
    rules = [
        {
            "record": "vkit:gpu_price_dollars_per_hour",
            "expr": f"vector({price_per_hour:g})",
            "labels": {"gpu": gpu_id, "gpu_type": gpu_type},
        }
        for gpu_id in gpu_ids
    ]
    return {"groups": [{"name": "vkit-gpu-prices", "rules": rules}]}
