"""The pinned container images every target runs (compose and Kubernetes alike).

vLLM: the release whose flags the launcher builds (``--shutdown-timeout`` needs >= 0.18).

The compose bundle names every image through a variable of its ``.env``, the pin here as
the default (:func:`from_env`: ``${VKIT_NGINX_IMAGE:-nginx:1.27.3-alpine}``), so a private
registry, or images built for a test, need no edit of ``compose.yaml``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
VLLM_CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0"
NGINX_IMAGE = "nginx:1.27.3-alpine"
REDIS_IMAGE = "redis:7.4.1-alpine"
PROMETHEUS_IMAGE = "prom/prometheus:v2.54.1"
GRAFANA_IMAGE = "grafana/grafana:11.2.2"
DCGM_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04"
ALERTMANAGER_IMAGE = "prom/alertmanager:v0.27.0"
GATEWAY_IMAGE = "vkit-gateway:0.1.0"  # built from vkit/render/gateway.Dockerfile
COMPOSE_GATEWAY_IMAGE = "vkit-gateway:latest"  # what `docker compose build` tags
# The CPU bundle's engine: vLLM's CPU build and the kit (deploy/images/vllm-cpu.Dockerfile).
COMPOSE_VLLM_CPU_IMAGE = "vkit-vllm-cpu:0.32.0"

# The compose bundle's variable for each pinned image (.env.example lists them all).
COMPOSE_IMAGE_VARIABLES = {
    VLLM_IMAGE: "VKIT_VLLM_IMAGE",
    COMPOSE_VLLM_CPU_IMAGE: "VKIT_VLLM_CPU_IMAGE",
    NGINX_IMAGE: "VKIT_NGINX_IMAGE",
    COMPOSE_GATEWAY_IMAGE: "VKIT_GATEWAY_IMAGE",
    REDIS_IMAGE: "VKIT_REDIS_IMAGE",
    PROMETHEUS_IMAGE: "VKIT_PROMETHEUS_IMAGE",
    GRAFANA_IMAGE: "VKIT_GRAFANA_IMAGE",
    ALERTMANAGER_IMAGE: "VKIT_ALERTMANAGER_IMAGE",
    DCGM_IMAGE: "VKIT_DCGM_IMAGE",
}


def from_env(image: str) -> str:
    """``image`` as compose reads it: its variable, with the pin as the default. An image
    without a variable is a ``KeyError`` (every image of the bundle can be pointed elsewhere)."""
    return f"${{{COMPOSE_IMAGE_VARIABLES[image]}:-{image}}}"


class Images(BaseModel):
    """The images of one deployment (the pins above unless a target names its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm: str = VLLM_IMAGE
    vllm_cpu: str = VLLM_CPU_IMAGE
    gateway: str = GATEWAY_IMAGE
    nginx: str = NGINX_IMAGE
    redis: str = REDIS_IMAGE
