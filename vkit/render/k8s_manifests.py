"""The fit-independent objects of a vkit deployment: :func:`base_objects`.

    >>> sorted(obj["kind"] for obj in base_objects("vkit"))[:3]
    ['Deployment', 'Deployment', 'HorizontalPodAutoscaler']

The gateway (2+ replicas, an HPA on CPU, a PodDisruptionBudget, a Service), Redis for the
shared limits, the vLLM StatefulSet's base (:mod:`vkit.render.k8s_vllm`) with its two
Services (``vllm``: ClusterIP; ``vllm-pods``: headless, one record per ready pod, which the
gateway's DNS discovery turns into its upstream list) and its PodDisruptionBudget, and
NetworkPolicies: only the gateway (and Prometheus, for ``/metrics``) reaches the vLLM pods;
only the gateway reaches Redis.

The gateway's keys file comes from a Secret mounted as a *directory*: the kubelet updates
such a volume by swapping the ``..data`` symlink, and the gateway's key store stats the file
through the symlink (mtime, size, inode), so it sees the new version and reloads it. A
``subPath`` mount would never update, so none is used.
"""

from __future__ import annotations

from typing import Any

from gateway.settings import TimeoutSettings
from gateway.settings_env import settings_env, settings_from_values
from vkit.deployment.drain import DRAIN_MARGIN_S
from vkit.deployment.images import REDIS_IMAGE
from vkit.deployment.service_ports import GATEWAY_ADMIN_PORT, GATEWAY_PORT, REDIS_PORT, VLLM_PORT
from vkit.render.k8s_spec import (
    API_KEY_SECRET,
    GATEWAY_IMAGE,
    GATEWAY_NAME,
    GATEWAY_PRESTOP_SLEEP_S,
    KEYS_DIR,
    KEYS_SECRET,
    REDIS_NAME,
    VLLM_NAME,
    VLLM_PODS_SERVICE,
)
from vkit.render.k8s_vllm import (
    labels,
    secret_ref,
    selector,
    supervisor_configmap,
    vllm_statefulset_base,
)

# The gateway drains open responses for up to its whole-request timeout on SIGTERM.
GATEWAY_DRAIN_S = int(TimeoutSettings().total)
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}  # the Prometheus operator's pods


def metadata(name: str, namespace: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(name, component)}


def base_objects(namespace: str, gateway_image: str = GATEWAY_IMAGE) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        supervisor_configmap(namespace),
        vllm_statefulset_base(namespace),
        service(VLLM_NAME, namespace, "inference", VLLM_PORT),
        service(VLLM_PODS_SERVICE, namespace, "inference", VLLM_PORT, headless=True),
        pdb(VLLM_NAME, namespace, "inference", {"maxUnavailable": 1}),
        gateway_deployment(namespace, gateway_image),
        service(GATEWAY_NAME, namespace, "gateway", GATEWAY_PORT),
        pdb(GATEWAY_NAME, namespace, "gateway", {"minAvailable": 1}),
        gateway_hpa(namespace),
        redis_deployment(namespace),
        service(REDIS_NAME, namespace, "limits", REDIS_PORT),
        *network_policies(namespace),
    ]


def service(
    name: str, namespace: str, component: str, port: int, *, headless: bool = False
) -> dict[str, Any]:
    target = VLLM_NAME if name == VLLM_PODS_SERVICE else name
    spec: dict[str, Any] = {
        "selector": selector(target),
        "ports": [{"name": "http", "port": port, "targetPort": port}],
    }
    if headless:
        spec = {"clusterIP": "None", **spec}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, component),
        "spec": spec,
    }


def pdb(name: str, namespace: str, component: str, budget: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, component),
        "spec": {**budget, "selector": {"matchLabels": selector(name)}},
    }


def http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def base_gateway_values(namespace: str) -> dict[str, Any]:
    """The gateway's settings that every overlay shares (the overlay adds its model's)."""
    return {
        "host": "0.0.0.0",
        "port": GATEWAY_PORT,
        "admin_host": "0.0.0.0",
        "admin_port": GATEWAY_ADMIN_PORT,
        "upstreams": [f"http://{VLLM_NAME}.{namespace}.svc:{VLLM_PORT}"],
        # Every ready pod, from the headless Service's records (replaces the list above).
        "discovery": {"dns_name": f"{VLLM_PODS_SERVICE}.{namespace}.svc", "dns_port": VLLM_PORT},
        "keys_file": f"{KEYS_DIR}/keys.yaml",
        "redis_url": f"redis://{REDIS_NAME}.{namespace}.svc:{REDIS_PORT}/0",
    }


def env_list(env: dict[str, str]) -> list[dict[str, Any]]:
    """A container's ``env`` entries for plain values."""
    return [{"name": name, "value": value} for name, value in env.items()]


def gateway_env(namespace: str) -> list[dict[str, Any]]:
    """The base's settings, and the vLLM key from its Secret (never rendered)."""
    env = env_list(settings_env(settings_from_values(base_gateway_values(namespace))))
    env.append(
        {
            "name": "VKIT_GATEWAY_UPSTREAM_API_KEY",
            "valueFrom": secret_ref(API_KEY_SECRET, "VLLM_API_KEY"),
        }
    )
    return env


def gateway_deployment(namespace: str, image: str) -> dict[str, Any]:
    # Readiness is /livez, not /readyz: with no ready replica the gateway still answers
    # (the 503 envelope with Retry-After, or holding requests under scale to zero), which
    # beats the load balancer's own error; every gateway has the same upstreams anyway.
    container = {
        "name": "gateway",
        "image": image,
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT},
            {"name": "admin", "containerPort": GATEWAY_ADMIN_PORT},
        ],
        "env": gateway_env(namespace),
        "volumeMounts": [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "startupProbe": http_probe("/livez", "http", 2, 30),
        "readinessProbe": http_probe("/livez", "http", 5, 2),
        "livenessProbe": http_probe("/livez", "http", 10, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(GATEWAY_PRESTOP_SLEEP_S)]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spread = {
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": selector(GATEWAY_NAME)},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY_NAME, namespace, "gateway"),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector(GATEWAY_NAME)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels(GATEWAY_NAME, "gateway")},
                "spec": {
                    "terminationGracePeriodSeconds": GATEWAY_PRESTOP_SLEEP_S
                    + GATEWAY_DRAIN_S
                    + DRAIN_MARGIN_S,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [spread]
                        }
                    },
                    "containers": [container],
                    "volumes": [{"name": "keys", "secret": {"secretName": KEYS_SECRET}}],
                },
            },
        },
    }


def gateway_hpa(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(GATEWAY_NAME, namespace, "gateway"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY_NAME},
            "minReplicas": 2,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def redis_deployment(namespace: str) -> dict[str, Any]:
    ping = {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 10, "timeoutSeconds": 3}
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        # Rate-limit windows only: nothing to persist.
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
        "readinessProbe": {**ping, "failureThreshold": 2},
        "livenessProbe": {**ping, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(REDIS_NAME, namespace, "limits"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(REDIS_NAME)},
            "template": {
                "metadata": {"labels": labels(REDIS_NAME, "limits")},
                "spec": {"containers": [container]},
            },
        },
    }


def network_policies(namespace: str) -> list[dict[str, Any]]:
    gateway = {"podSelector": {"matchLabels": selector(GATEWAY_NAME)}}
    prometheus = {"namespaceSelector": {}, "podSelector": {"matchLabels": PROMETHEUS_PODS}}
    vllm_port = [{"protocol": "TCP", "port": VLLM_PORT}]
    return [
        # vLLM's port serves both the API (key-protected) and /metrics: the gateway and
        # Prometheus may connect, nothing else.
        network_policy(VLLM_NAME, namespace, [{"from": [gateway, prometheus], "ports": vllm_port}]),
        network_policy(
            REDIS_NAME,
            namespace,
            [{"from": [gateway], "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}],
        ),
        network_policy(
            GATEWAY_NAME,
            namespace,
            [
                {"ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]},
                {"from": [prometheus], "ports": [{"protocol": "TCP", "port": GATEWAY_ADMIN_PORT}]},
            ],
        ),
    ]


def network_policy(target: str, namespace: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{target}-ingress", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": selector(target)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
