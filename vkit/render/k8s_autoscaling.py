"""Autoscaling the vLLM replicas on vLLM's own queue: KEDA, or an HPA + prometheus-adapter.

    >>> scale_target("rtx4090", "llama-3.1-8b", "awq")     # vkit capacity's users per GPU
    23
    >>> keda_scaled_object(spec)["spec"]["triggers"][0]["metadata"]["query"]
    'sum(vllm:num_requests_running{namespace="vkit",model_name="llama-3.1-8b"})'

Two signals, each an ``AverageValue`` target, so that desired replicas =
``ceil(signal / target)`` (KEDA's and the HPA's rule alike) and the larger one wins:

- requests *running*, target = the capacity planner's concurrency per GPU at the user speed
  it plans for (``vkit capacity``: 40 tok/s per user, 600-token contexts): more running
  requests per replica means every user gets less than that speed;
- requests *waiting*, target = a quarter of that (:attr:`K8sSpec.waiting_target`): vLLM queues
  only when its batch or KV cache is full, and a queue is latency.

Scale to zero (``zero``): KEDA may go to no replica; at zero no vLLM series exists, so the
requests the gateway holds while no replica is ready (``vkit_gateway_held_requests``) wake
the fleet: that trigger's activation threshold is 0.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from launcher.sizing.capacity import UsageProfile, gpu_throughput
from launcher.sizing.capacity.usage import context_tokens
from launcher.sizing.gpus import get_gpu
from launcher.sizing.memory import Quantization
from launcher.sizing.models import load_model
from vkit.render.k8s_spec import VLLM_NAME, K8sSpec

POLLING_INTERVAL_S = 15
COOLDOWN_S = 900  # KEDA: idle this long before going from one replica to zero
SCALE_DOWN_WINDOW_S = 600  # the highest recommendation of the last 10 minutes holds
ADAPTER_METRICS_QUERY = "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def scale_target(gpu: str, model: str, quant: Quantization) -> int:
    """Concurrent requests one GPU serves at the planner's per-user speed (0: none)."""
    usage = UsageProfile(daily_users=1)
    speed = gpu_throughput(
        get_gpu(gpu),
        load_model(model),
        quant,
        target_tok_s=usage.user_tok_s,
        context_tokens=context_tokens(usage),
    )
    return speed.users


def vllm_query(spec: K8sSpec, metric: str) -> str:
    return f'sum({metric}{{namespace="{spec.namespace}",model_name="{spec.model}"}})'


def gateway_held_query(spec: K8sSpec) -> str:
    return f'sum(vkit_gateway_held_requests{{namespace="{spec.namespace}"}})'


def signals(spec: K8sSpec) -> list[tuple[str, str, int]]:
    """(name, PromQL, per-replica target) of every scaling signal."""
    found = [
        ("running", vllm_query(spec, "vllm:num_requests_running"), spec.scale_target),
        ("waiting", vllm_query(spec, "vllm:num_requests_waiting"), spec.waiting_target),
    ]
    if spec.autoscaler == "zero":
        found.append(("gateway-held", gateway_held_query(spec), spec.scale_target))
    return found


def scaling_behavior() -> dict[str, Any]:
    """Up fast (a GPU replica takes minutes to start), down slowly (and one at a time)."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 60,
            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 120}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
        },
    }


def target_ref(name: str = VLLM_NAME) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}


def keda_scaled_object(spec: K8sSpec, name: str = VLLM_NAME) -> dict[str, Any]:
    triggers = []
    for signal, query, target in signals(spec):
        metadata = {"serverAddress": spec.prometheus_url, "query": query, "threshold": str(target)}
        if signal == "gateway-held":
            metadata["activationThreshold"] = "0"
        triggers.append(
            {
                "type": "prometheus",
                "name": signal,
                "metricType": "AverageValue",
                "metadata": metadata,
            }
        )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": spec.namespace},
        "spec": {
            "scaleTargetRef": target_ref(name),
            "pollingInterval": POLLING_INTERVAL_S,
            "cooldownPeriod": COOLDOWN_S,
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": scaling_behavior()}},
            "triggers": triggers,
        },
    }


def adapter_metric_name(metric: str) -> str:
    """The custom-metrics name prometheus-adapter serves for a vLLM series."""
    return metric.replace(":", "_")


def vllm_hpa(spec: K8sSpec, name: str = VLLM_NAME) -> dict[str, Any]:
    metrics = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": adapter_metric_name(metric)},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }
        for metric, target in (
            ("vllm:num_requests_running", spec.scale_target),
            ("vllm:num_requests_waiting", spec.waiting_target),
        )
    ]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": spec.namespace},
        "spec": {
            "scaleTargetRef": target_ref(name),
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "behavior": scaling_behavior(),
            "metrics": metrics,
        },
    }


def prometheus_adapter_values(spec: K8sSpec) -> dict[str, Any]:
    """Helm values for prometheus-community/prometheus-adapter: the vLLM gauges per pod."""
    url = urlsplit(spec.prometheus_url)
    rules = [
        {
            "seriesQuery": f'{metric}{{namespace!="",pod!=""}}',
            "resources": {
                "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
            },
            "name": {"matches": f"^{metric}$", "as": adapter_metric_name(metric)},
            "metricsQuery": ADAPTER_METRICS_QUERY,
        }
        for metric in ("vllm:num_requests_running", "vllm:num_requests_waiting")
    ]
    return {
        "prometheus": {
            "url": f"{url.scheme}://{url.hostname}",
            "port": url.port or (443 if url.scheme == "https" else 80),
        },
        "rules": {"default": False, "custom": rules},
    }


def autoscaling_objects(spec: K8sSpec, name: str = VLLM_NAME) -> list[dict[str, Any]]:
    """The autoscaler of the StatefulSet ``name`` (a deployment file's group: its own)."""
    if spec.autoscaler in ("keda", "zero"):
        return [keda_scaled_object(spec, name)]
    if spec.autoscaler == "hpa":
        return [vllm_hpa(spec, name)]
    return []
