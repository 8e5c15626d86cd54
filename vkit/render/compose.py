"""The compose file for a GPU box, as a dict: :func:`build_compose`.

    >>> spec = ComposeSpec(gpu="rtx4090", gpu_ids=["0", "1"], model="llama-3.1-8b")
    >>> compose = build_compose(spec, plan)   # plan: launcher.sizing.fit.plan_fit(...)
    >>> sorted(compose["services"])[:3]
    ['dcgm-exporter', 'gateway', 'grafana']

One vLLM service per GPU (``vllm-<id>``, that GPU reserved), NGINX over them, the gateway
in front (the only published port besides Grafana; its admin listener, which Prometheus
scrapes, is not published), Redis for shared limits, Prometheus, Grafana and NVIDIA's DCGM
exporter. Paths are relative to the compose file
(``deploy/docker/``): the rendered NGINX site and Prometheus files beside it, the static
monitoring files in ``../monitoring``.

Secrets are never rendered: ``${VAR:?message}`` makes ``docker compose`` refuse to start
without them; ``.env.example`` documents every variable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.fit import FitPlan
from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv

# Pinned images. vLLM: the release whose flags the launcher builds (--shutdown-timeout
# needs >= 0.18; REFERENCE section 1).
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
NGINX_IMAGE = "nginx:1.27.3-alpine"
REDIS_IMAGE = "redis:7.4.1-alpine"
PROMETHEUS_IMAGE = "prom/prometheus:v2.54.1"
GRAFANA_IMAGE = "grafana/grafana:11.2.2"
DCGM_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04"

VLLM_PORT = 8000
NGINX_PORT = 8000
GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9180  # /metrics and details: on the backend network only, never published
DCGM_PORT = 9400
VOLUMES = ("hf-cache", "vllm-cache", "prometheus-data", "grafana-data")
VLLM_ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
# Drain: the container gets SIGTERM, vLLM finishes in-flight requests for up to
# --shutdown-timeout seconds; compose must wait longer before SIGKILL.
DRAIN_MARGIN_S = 15

MODEL_VAR = "${VLLM_MODEL:?set VLLM_MODEL to the Hugging Face id to serve (see .env.example)}"
API_KEY_VAR = "${VLLM_API_KEY:?set VLLM_API_KEY, the key between the gateway and vLLM}"
KEYS_FILE_VAR = "${VKIT_KEYS_FILE:?set VKIT_KEYS_FILE to the keys file (vkit keys add)}"
GRAFANA_PASSWORD_VAR = "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"


class ComposeSpec(BaseModel):
    """What the box is: GPU type and ids, the model, and how vLLM drains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU profile key in configs/gpus.yaml, e.g. rtx4090")
    gpu_ids: list[str] = Field(min_length=1, description="CUDA device ids, one replica each")
    model: str = Field(description="served model name (a configs/models entry)")
    shutdown_timeout_s: int = Field(default=30, ge=1)
    gateway_image: str = "vkit-gateway:latest"


def replica_service_name(gpu_id: str) -> str:
    return f"vllm-{gpu_id}"


def build_compose(spec: ComposeSpec, plan: FitPlan) -> dict[str, Any]:
    """The whole compose file; each service gets fresh dicts (no YAML aliases)."""
    services: dict[str, Any] = {}
    for gpu_id in spec.gpu_ids:
        services[replica_service_name(gpu_id)] = vllm_service(spec, plan, gpu_id)
    services["nginx"] = nginx_service(spec)
    services["gateway"] = gateway_service(spec)
    services["redis"] = redis_service()
    services["prometheus"] = prometheus_service()
    services["grafana"] = grafana_service()
    services["dcgm-exporter"] = dcgm_service()
    return {
        "services": services,
        "networks": {"backend": {"driver": "bridge"}, "edge": {"driver": "bridge"}},
        "volumes": {name: {} for name in VOLUMES},
    }


def http_probe(url: str) -> str:
    """A healthcheck in Python (the vLLM and gateway images have it; curl is not certain)."""
    return f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"


def vllm_command(spec: ComposeSpec, plan: FitPlan) -> list[str]:
    """The launcher's tuned flags (no engine prefix: the entrypoint runs the server)."""
    options = VllmOptions(
        model=MODEL_VAR,
        served_model_name=spec.model,
        host="0.0.0.0",
        port=VLLM_PORT,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        tensor_parallel=plan.tensor_parallel,
        quant=plan.quant,
        kv_cache_dtype=plan.kv_dtype,
        shutdown_timeout=spec.shutdown_timeout_s,
    )
    return build_vllm_argv(options, engine=[])


def vllm_service(spec: ComposeSpec, plan: FitPlan, gpu_id: str) -> dict[str, Any]:
    probe = http_probe(f"http://localhost:{VLLM_PORT}/health")
    return {
        "image": VLLM_IMAGE,
        "entrypoint": list(VLLM_ENTRYPOINT),
        "command": vllm_command(spec, plan),
        # vLLM reads its --api-key from VLLM_API_KEY: the secret stays off the command line.
        "environment": {
            "VLLM_API_KEY": API_KEY_VAR,
            "HF_TOKEN": "${HF_TOKEN:-}",
            "VLLM_NO_USAGE_STATS": "1",
        },
        "ipc": "host",
        "volumes": ["hf-cache:/root/.cache/huggingface", "vllm-cache:/root/.cache/vllm"],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [
                        {"driver": "nvidia", "device_ids": [gpu_id], "capabilities": ["gpu"]}
                    ]
                }
            }
        },
        # Downloading and loading a model takes minutes: failures don't count meanwhile.
        "healthcheck": {
            "test": ["CMD", "python3", "-c", probe],
            "interval": "15s",
            "timeout": "10s",
            "retries": 4,
            "start_period": "900s",
        },
        "restart": "unless-stopped",
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{spec.shutdown_timeout_s + DRAIN_MARGIN_S}s",
        "networks": ["backend"],
    }


def nginx_service(spec: ComposeSpec) -> dict[str, Any]:
    return {
        "image": NGINX_IMAGE,
        "volumes": ["./nginx/vkit.conf:/etc/nginx/conf.d/default.conf:ro"],
        # Started, not healthy: NGINX skips a replica that is down, so one slow or broken
        # GPU does not hold back the others.
        "depends_on": {
            replica_service_name(gpu_id): {"condition": "service_started"}
            for gpu_id in spec.gpu_ids
        },
        "healthcheck": {
            "test": [
                "CMD",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{NGINX_PORT}/nginx_health",
            ],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }


def gateway_service(spec: ComposeSpec) -> dict[str, Any]:
    probe = http_probe(f"http://localhost:{GATEWAY_PORT}/livez")
    return {
        "image": spec.gateway_image,
        "build": {"context": "../..", "dockerfile": "deploy/docker/gateway.Dockerfile"},
        "environment": {
            "VKIT_GATEWAY_HOST": "0.0.0.0",
            "VKIT_GATEWAY_PORT": str(GATEWAY_PORT),
            "VKIT_GATEWAY_ADMIN_HOST": "0.0.0.0",
            "VKIT_GATEWAY_ADMIN_PORT": str(GATEWAY_ADMIN_PORT),
            "VKIT_GATEWAY_UPSTREAMS": f'["http://nginx:{NGINX_PORT}"]',
            "VKIT_GATEWAY_UPSTREAM_API_KEY": API_KEY_VAR,
            "VKIT_GATEWAY_KEYS_FILE": "/etc/vkit/keys.yaml",
            "VKIT_GATEWAY_REDIS_URL": "redis://redis:6379/0",
            "VKIT_GATEWAY_HEALTH__EXPECTED_MODELS": f'["{spec.model}"]',
        },
        "volumes": [f"{KEYS_FILE_VAR}:/etc/vkit/keys.yaml:ro"],
        "ports": [f"${{VKIT_GATEWAY_PORT:-{GATEWAY_PORT}}}:{GATEWAY_PORT}"],
        "depends_on": {
            "nginx": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        },
        "healthcheck": {
            "test": ["CMD", "python", "-c", probe],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "20s",
        },
        "restart": "unless-stopped",
        "networks": ["backend", "edge"],
    }


def redis_service() -> dict[str, Any]:
    return {
        "image": REDIS_IMAGE,
        # Rate-limit windows only: nothing to persist.
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "healthcheck": {
            "test": ["CMD", "redis-cli", "ping"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }


def prometheus_service() -> dict[str, Any]:
    return {
        "image": PROMETHEUS_IMAGE,
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=30d",
        ],
        "volumes": [
            "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            "./prometheus/cost.rules.yml:/etc/prometheus/cost.rules.yml:ro",
            "../monitoring/rules:/etc/prometheus/rules:ro",
            "prometheus-data:/prometheus",
        ],
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"],
            "interval": "15s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }


def grafana_service() -> dict[str, Any]:
    return {
        "image": GRAFANA_IMAGE,
        "environment": {
            "GF_SECURITY_ADMIN_PASSWORD": GRAFANA_PASSWORD_VAR,
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
        },
        "volumes": [
            "../monitoring/grafana/provisioning:/etc/grafana/provisioning:ro",
            "../monitoring/grafana/dashboards:/etc/vkit/dashboards:ro",
            "grafana-data:/var/lib/grafana",
        ],
        "ports": ["${GRAFANA_PORT:-3000}:3000"],
        "depends_on": {"prometheus": {"condition": "service_healthy"}},
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:3000/api/health"],
            "interval": "15s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "networks": ["backend", "edge"],
    }


def dcgm_service() -> dict[str, Any]:
    return {
        "image": DCGM_IMAGE,
        "cap_add": ["SYS_ADMIN"],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
                }
            }
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }
