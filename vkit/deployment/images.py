"""The pinned container images every target runs (compose and Kubernetes alike).

vLLM: the release whose flags the launcher builds (``--shutdown-timeout`` needs >= 0.18).
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
GATEWAY_IMAGE = "vkit-gateway:0.1.0"  # built from deploy/docker/gateway.Dockerfile
COMPOSE_GATEWAY_IMAGE = "vkit-gateway:latest"  # what `docker compose build` tags


class Images(BaseModel):
    """The images of one deployment (the pins above unless a target names its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm: str = VLLM_IMAGE
    vllm_cpu: str = VLLM_CPU_IMAGE
    gateway: str = GATEWAY_IMAGE
    nginx: str = NGINX_IMAGE
    redis: str = REDIS_IMAGE
