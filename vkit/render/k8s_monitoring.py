"""Monitoring objects for the Prometheus operator and Grafana, from compose's own files.

    >>> rule = prometheus_rule("vkit", RULES_FILE.read_text())
    >>> rule["spec"]["groups"][0]["name"]
    'vkit-recording'

One source, two renderings: the PrometheusRule's groups are ``deploy/monitoring/rules/
vkit.rules.yml`` as compose mounts it, read at render time; the Grafana dashboard ConfigMap
holds ``deploy/monitoring/grafana/dashboards/vkit.json`` byte for byte (label
``grafana_dashboard: "1"``, which the Grafana sidecar of kube-prometheus-stack watches in
every namespace). Its panels query the dashboard's ``datasource`` variable, which defaults
to Grafana's default Prometheus: kube-prometheus-stack's own (its datasource sidecar reads
only Grafana's namespace, so a datasource shipped here would never load:
docs/kubernetes.md#grafana).
PodMonitors take the job name from the pods' ``app.kubernetes.io/name`` (``vllm``,
``vkit-gateway``): the alerts' ``up{job=...}`` match, as they do under compose.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from vkit.render.k8s_spec import GATEWAY_NAME, VLLM_NAME, K8sSpec
from vkit.render.k8s_vllm import selector

# deploy/monitoring/, installed as the package vkit.monitoring (pyproject's package-dir).
MONITORING_DIR = Path(str(files("vkit.monitoring")))
RULES_FILE = MONITORING_DIR / "rules" / "vkit.rules.yml"
DASHBOARD_FILE = MONITORING_DIR / "grafana" / "dashboards" / "vkit.json"
JOB_LABEL = "app.kubernetes.io/name"


def pod_monitor(namespace: str, name: str, port: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "jobLabel": JOB_LABEL,
            "selector": {"matchLabels": selector(name)},
            "podMetricsEndpoints": [{"port": port, "path": "/metrics", "interval": "15s"}],
        },
    }


def prometheus_rule(namespace: str, rules_text: str) -> dict[str, Any]:
    groups = yaml.safe_load(rules_text)["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "vkit", "namespace": namespace},
        "spec": {"groups": groups},
    }


def dashboard_configmap(namespace: str, dashboard_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "vkit-grafana-dashboard",
            "namespace": namespace,
            "labels": {"grafana_dashboard": "1"},
        },
        "data": {"vkit.json": dashboard_text},
    }


def monitoring_objects(
    namespace: str, rules_text: str, dashboard_text: str
) -> list[dict[str, Any]]:
    """The monitoring component: the same for every overlay."""
    return [
        pod_monitor(namespace, VLLM_NAME, "http"),
        pod_monitor(namespace, GATEWAY_NAME, "admin"),
        prometheus_rule(namespace, rules_text),
        dashboard_configmap(namespace, dashboard_text),
    ]


def gpu_price_rule(spec: K8sSpec, price_per_hour: float) -> dict[str, Any]:
    """``vkit:gpu_price_dollars_per_hour`` per replica (its GPUs x the hourly price) while
    Prometheus scrapes it: the cost rules and panels then follow the autoscaler."""
    per_replica = price_per_hour * spec.tensor_parallel
    expr = f'up{{job="{VLLM_NAME}",namespace="{spec.namespace}"}} * 0 + {per_replica:g}'
    rule = {
        "record": "vkit:gpu_price_dollars_per_hour",
        "expr": expr,
        "labels": {"gpu_type": spec.gpu},
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "vkit-gpu-prices", "namespace": spec.namespace},
        "spec": {"groups": [{"name": "vkit-gpu-prices", "rules": [rule]}]},
    }
