"""What one Kubernetes deployment is: :class:`K8sSpec`, the fit solver's plan beside it.

    >>> spec = K8sSpec(gpu="rtx4090", model="llama-3.1-8b", quant="awq",
    ...                hf_model="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    ...                scale_target=23)
    >>> spec.overlay_name
    'rtx4090-llama-3.1-8b-awq'

Names, ports, images and the drain arithmetic shared by the manifest builders. The vLLM
replicas drain in three steps: ``preStop`` sleeps :data:`PRESTOP_SLEEP_S` while the endpoint
removal reaches every kube-proxy and the gateway; SIGTERM then makes vLLM finish in-flight
requests for up to ``--shutdown-timeout``; the kubelet waits
``terminationGracePeriodSeconds = preStop + shutdown timeout + margin`` before SIGKILL
(docs/vllm-server.md#graceful-drain: the grace period must exceed preStop + N). The shutdown
timeout is the gateway's whole-request timeout by default: a scale-down or a rollout then
lets every answer the gateway still waits for finish (docs/kubernetes.md#drain).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.memory import Quantization
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S, DrainBudget
from vkit.deployment.images import GATEWAY_IMAGE

Autoscaler = Literal["keda", "hpa", "zero", "none"]

NAMESPACE = "vkit"
VLLM_NAME = "vllm"  # the StatefulSet and the gateway's ClusterIP Service
VLLM_PODS_SERVICE = "vllm-pods"  # headless: one DNS record per pod (the StatefulSet's service)
GATEWAY_NAME = "vkit-gateway"  # also Prometheus' job name for it (the alerts' up{job=...})
VLLM_JOB = "vllm"  # Prometheus' job name for the replicas (the alerts' up{job="vllm"})
REDIS_NAME = "redis"

# Secrets are referenced, never rendered: the README's `kubectl create secret` lines make them.
API_KEY_SECRET = "vkit-vllm-api-key"  # key VLLM_API_KEY: between the gateway and vLLM
KEYS_SECRET = "vkit-gateway-keys"  # key keys.yaml: the gateway's API keys (vkit keys)
HF_TOKEN_SECRET = "vkit-hf-token"  # key HF_TOKEN, optional: gated models
KEYS_DIR = "/etc/vkit/keys"

PRESTOP_SLEEP_S = 10
GATEWAY_PRESTOP_SLEEP_S = 5
# Model start: ~10 minutes for the engine (load, profile, CUDA graphs) plus the download at a
# modest 50 MB/s (20 s per GiB of weights): the startupProbe allows this before liveness counts.
STARTUP_BASE_S = 600
STARTUP_S_PER_WEIGHT_GIB = 20
PROBE_PERIOD_S = 10
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


class K8sSpec(BaseModel):
    """One deployment: GPU profile (or ``cpu``), model, checkpoint, autoscaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU profile key in configs/gpus.yaml, or 'cpu'")
    gpu_product: str | None = Field(
        default=None, description="nvidia.com/gpu.product node label (GPU feature discovery)"
    )
    model: str = Field(description="served model name (a configs/models entry)")
    hf_model: str = Field(description="what vLLM loads: a Hugging Face id or a local directory")
    quant: Quantization = "bf16"
    vllm_quant: Quantization = Field(
        default="bf16", description="what vLLM quantizes at load (a checkpoint may come quantized)"
    )
    tensor_parallel: int = Field(default=1, ge=1, le=8)
    shutdown_timeout_s: int = Field(default=GATEWAY_TOTAL_TIMEOUT_S, ge=1)
    autoscaler: Autoscaler = "keda"
    routing: Literal["round_robin", "aware"] = Field(
        default="aware", description="the gateway's routing over the pods it discovers"
    )
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    scale_target: int = Field(default=1, ge=1, description="running requests per replica")
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    monitoring: bool = Field(default=True, description="PodMonitors, rules, dashboard (CRDs)")
    ledger: Literal["off", "sqlite", "postgres"] = Field(
        default="off", description="the usage ledger: off, SQLite (one gateway), PostgreSQL"
    )
    gateway_image: str = GATEWAY_IMAGE
    namespace: str = NAMESPACE

    @property
    def cpu(self) -> bool:
        return self.gpu == "cpu"

    @property
    def overlay_name(self) -> str:
        name = f"{self.gpu}-{self.model}" if self.cpu else f"{self.gpu}-{self.model}-{self.quant}"
        if self.tensor_parallel > 1:
            name += f"-tp{self.tensor_parallel}"
        if self.autoscaler in ("hpa", "zero"):
            name += f"-{self.autoscaler}"
        if self.routing == "round_robin":
            name += "-round-robin"
        return name

    @property
    def waiting_target(self) -> int:
        """Queued requests per replica that call for another replica: a quarter of what one
        replica runs at the target speed (a queue is latency every user in it feels)."""
        return max(1, self.scale_target // 4)


def termination_grace_s(shutdown_timeout_s: int) -> int:
    """preStop sleep + vLLM's drain + the drain budget's margin for the process to exit."""
    return DrainBudget(replica_s=shutdown_timeout_s).grace_s(PRESTOP_SLEEP_S + shutdown_timeout_s)


def startup_budget_s(weights_gib: float) -> int:
    """Seconds the startupProbe allows for download + load, rounded up to a minute."""
    seconds = STARTUP_BASE_S + STARTUP_S_PER_WEIGHT_GIB * weights_gib
    return math.ceil(seconds / 60) * 60


def gpu_product_label(gpu_name: str) -> str:
    """``NVIDIA GeForce RTX 4090`` -> ``NVIDIA-GeForce-RTX-4090``, as GPU feature discovery
    writes ``nvidia.com/gpu.product`` (the name nvidia-smi shows, spaces as dashes); a
    parenthesised remark of the profile's name is dropped."""
    bare = gpu_name.split("(")[0].strip()
    return "-".join(bare.split())
