"""The compose file for a GPU box, as a dict: :func:`build_compose`.

    >>> spec = ComposeSpec(gpu="h200", gpu_ids=["0", "1", "2", "3"], tensor_parallel=2,
    ...                    model="llama-3.1-70b")
    >>> compose = build_compose(spec, plan)   # plan: plan_fit(FitRequest(tensor_parallel=2), ...)
    >>> [name for name in compose["services"] if name.startswith("vllm-")]
    ['vllm-0-1', 'vllm-2-3']

One vLLM service per GPU set (``vllm-<set>``: ``vllm-0``, or ``vllm-0-1`` with tensor
parallel 2; those GPUs reserved), NGINX over them, the gateway in front (the only published
port besides Grafana; its admin listener, which Prometheus scrapes, is not published), Redis
for shared limits, Prometheus, Grafana and NVIDIA's DCGM exporter. Paths are relative to the
compose file (``deploy/docker/``): the rendered NGINX site and Prometheus files beside it,
the replicas' supervisor (``vllm_supervisor.py``), the static monitoring files in
``../monitoring``.

A replica's entrypoint is the supervisor, which runs vLLM as its child and exits when vLLM
stops answering ``/health`` (Docker itself does nothing about ``unhealthy``), so that
``restart:`` brings the container back.

Stopping (``docker compose down`` stops a service only after every service that depends on
it has stopped): the gateway first, which finishes its open responses (uvicorn's graceful
shutdown, up to ``timeouts.total``, set here), then NGINX (SIGQUIT: graceful), then the
replicas (vLLM's ``--shutdown-timeout`` drain). Each ``stop_grace_period`` is its drain plus a
margin (:func:`stop_grace_s`), NGINX's that of the replicas. ``down -t N`` overrides them all.

Routing (the gateway's ``routing``): ``round_robin`` (the default) sends everything through
NGINX; ``aware`` lists the replicas themselves as the gateway's upstreams (it routes by their
load and the prompt's prefix) and leaves NGINX out, which then has no client.

Secrets are never rendered: ``${VAR:?message}`` makes ``docker compose`` refuse to start
without them; ``.env.example`` documents every variable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.checkpoints import checkpoint_for
from launcher.sizing.fit import FitPlan
from launcher.sizing.gpu_sets import GpuSet, split_gpu_sets
from launcher.supervision.launch_spec import LaunchSettings, plan_vllm_argv
from vkit.render.alertmanager import alertmanager_service
from vkit.render.healthcheck import wget_healthcheck

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
VLLM_SERVER = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
# The supervisor (a file beside compose.yaml, stdlib only) runs VLLM_SERVER as its child.
SUPERVISOR_FILE = "vllm_supervisor.py"
SUPERVISOR_PATH = "/opt/vkit/vllm_supervisor.py"
# Drain: a container gets its stop signal and finishes what is in flight for up to its
# drain (vLLM: --shutdown-timeout; the gateway: timeouts.total); compose waits this much
# longer before SIGKILL.
DRAIN_MARGIN_S = 15
# The gateway's longest request (its timeouts.total, which is also uvicorn's graceful
# shutdown there), set in its environment; NGINX's read timeout (ProxyTuning) is the same.
GATEWAY_TOTAL_TIMEOUT_S = 600
# Where the gateway sees the keys directory and the replicas' Hugging Face cache.
KEYS_DIR_MOUNT = "/etc/vkit/keys"
KEYS_FILE_NAME = "keys.yaml"
HF_CACHE_VOLUME = "hf-cache"
VLLM_HF_HOME = "/root/.cache/huggingface"  # the vLLM image's HF_HOME: the hub is below it
GATEWAY_HF_MOUNT = "/var/cache/huggingface"

MODEL_VAR = "${VLLM_MODEL:?set VLLM_MODEL to the Hugging Face id to serve (see .env.example)}"


def served_model_var(spec: ComposeSpec, plan: FitPlan) -> str:
    """``VLLM_MODEL``, required; its message names the catalog's checkpoint when there is one."""
    checkpoint = checkpoint_for(spec.model, plan.quant)
    if checkpoint is None:
        return MODEL_VAR
    return (
        f"${{VLLM_MODEL:?set VLLM_MODEL to the Hugging Face id to serve, e.g. {checkpoint.repo}}}"
    )


API_KEY_VAR = "${VLLM_API_KEY:?set VLLM_API_KEY, the key between the gateway and vLLM}"
# A directory, not the file: `vkit keys add` replaces keys.yaml (a new inode), which a
# bind mount of the file itself would never show the container.
KEYS_DIR_VAR = "${VKIT_KEYS_DIR:?set VKIT_KEYS_DIR to the directory of keys.yaml (vkit keys add)}"
GRAFANA_PASSWORD_VAR = "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"


class ComposeSpec(BaseModel):
    """What the box is: GPU type and ids, the model, and how vLLM drains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU profile key in configs/gpus.yaml, e.g. rtx4090")
    gpu_ids: list[str] = Field(min_length=1, description="CUDA device ids (nvidia-smi's)")
    tensor_parallel: int = Field(default=1, ge=1, description="GPUs per replica")
    model: str = Field(description="served model name (a configs/models entry)")
    shutdown_timeout_s: int = Field(default=30, ge=1)
    gateway_image: str = "vkit-gateway:latest"
    routing: Literal["round_robin", "aware"] = Field(
        default="round_robin", description="the gateway's routing: via NGINX, or replica-aware"
    )

    @property
    def gpu_sets(self) -> list[GpuSet]:
        """One set per replica (:class:`launcher.errors.GpuSetError` if they don't split)."""
        return split_gpu_sets(self.gpu_ids, tensor_parallel=self.tensor_parallel)


class HealthPolicy(BaseModel):
    """How a replica is judged: Docker's healthcheck and the supervisor use the same numbers.

    Failures in the first ``start_period_s`` do not count until a probe has succeeded
    (downloading 70B of weights can take most of it; a start that fails ends vLLM, and so
    the supervisor, long before); then ``retries`` failed probes in a row, one every
    ``interval_s``, make the supervisor stop vLLM and exit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: int = 15
    timeout_s: int = 10
    retries: int = 4
    start_period_s: int = 1800


REPLICA_HEALTH = HealthPolicy()


def replica_service_name(gpu_set: GpuSet) -> str:
    return f"vllm-{gpu_set.name}"


def stop_grace_s(drain_s: int) -> int:
    """What compose waits after the stop signal before SIGKILL: the drain and a margin."""
    return drain_s + DRAIN_MARGIN_S


def build_compose(spec: ComposeSpec, plan: FitPlan) -> dict[str, Any]:
    """The whole compose file; each service gets fresh dicts (no YAML aliases)."""
    services: dict[str, Any] = {}
    for gpu_set in spec.gpu_sets:
        services[replica_service_name(gpu_set)] = vllm_service(spec, plan, gpu_set)
    if spec.routing == "round_robin":  # aware: the gateway reaches the replicas itself
        services["nginx"] = nginx_service(spec)
    services["gateway"] = gateway_service(spec, served_model_var(spec, plan))
    services["redis"] = redis_service()
    services["prometheus"] = prometheus_service()
    services["grafana"] = grafana_service()
    services["dcgm-exporter"] = dcgm_service()
    services["alertmanager"] = alertmanager_service()
    return {
        "services": services,
        "networks": {"backend": {"driver": "bridge"}, "edge": {"driver": "bridge"}},
        "volumes": {name: {} for name in VOLUMES},
    }


def http_probe(url: str) -> str:
    """A healthcheck in Python (the vLLM and gateway images have it; curl is not certain)."""
    return f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"


def vllm_command(spec: ComposeSpec, plan: FitPlan) -> list[str]:
    """The launcher's tuned flags (no engine prefix: the entrypoint runs the server), built as
    ``vkit launch`` builds them; vLLM loads what ``VLLM_MODEL`` names."""
    settings = LaunchSettings(
        model=spec.model,
        served_model_name=spec.model,
        host="0.0.0.0",
        port=VLLM_PORT,
        quant=plan.quant,
        shutdown_timeout=spec.shutdown_timeout_s,
    )
    return plan_vllm_argv(settings, plan, load=served_model_var(spec, plan), engine=[])


def supervisor_entrypoint(policy: HealthPolicy = REPLICA_HEALTH) -> list[str]:
    """The supervisor with the healthcheck's numbers, then the server it runs (the
    service's ``command``, vLLM's flags, follows)."""
    return [
        "python3",
        SUPERVISOR_PATH,
        "--health-url",
        f"http://127.0.0.1:{VLLM_PORT}/health",
        "--interval",
        str(policy.interval_s),
        "--timeout",
        str(policy.timeout_s),
        "--failures",
        str(policy.retries),
        "--start-period",
        str(policy.start_period_s),
        "--",
        *VLLM_SERVER,
    ]


def vllm_environment(gpu_set: GpuSet) -> dict[str, str]:
    # vLLM reads its --api-key from VLLM_API_KEY: the secret stays off the command line.
    env = {
        "VLLM_API_KEY": API_KEY_VAR,
        "HF_TOKEN": "${HF_TOKEN:-}",
        "VLLM_NO_USAGE_STATS": "1",
        # GPU ids in nvidia-smi's and DCGM's order (CUDA's default is fastest first).
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if gpu_set.size > 1:
        env["NCCL_DEBUG"] = "WARN"  # NCCL's own faults in the container's log
    return env


def gpu_reservation(gpu_set: GpuSet) -> dict[str, Any]:
    device = {"driver": "nvidia", "device_ids": list(gpu_set.ids), "capabilities": ["gpu"]}
    return {"resources": {"reservations": {"devices": [device]}}}


def vllm_service(spec: ComposeSpec, plan: FitPlan, gpu_set: GpuSet) -> dict[str, Any]:
    probe = http_probe(f"http://localhost:{VLLM_PORT}/health")
    policy = REPLICA_HEALTH
    service: dict[str, Any] = {
        "image": VLLM_IMAGE,
        "entrypoint": supervisor_entrypoint(policy),
        "command": vllm_command(spec, plan),
        "environment": vllm_environment(gpu_set),
        # Docker's init is PID 1: it reaps vLLM's worker processes and passes the stop
        # signal to the supervisor, which passes it to vLLM and waits for its drain.
        "init": True,
        # The host's IPC namespace: /dev/shm for PyTorch and NCCL (shm_size does not apply).
        "ipc": "host",
        "volumes": [
            f"{HF_CACHE_VOLUME}:{VLLM_HF_HOME}",
            "vllm-cache:/root/.cache/vllm",
            f"./{SUPERVISOR_FILE}:{SUPERVISOR_PATH}:ro",
        ],
        "deploy": gpu_reservation(gpu_set),
        # Downloading and loading a model takes minutes: failures don't count meanwhile.
        "healthcheck": {
            "test": ["CMD", "python3", "-c", probe],
            "interval": f"{policy.interval_s}s",
            "timeout": f"{policy.timeout_s}s",
            "retries": policy.retries,
            "start_period": f"{policy.start_period_s}s",
        },
        "restart": "unless-stopped",
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{stop_grace_s(spec.shutdown_timeout_s)}s",
        "networks": ["backend"],
    }
    if gpu_set.size > 1:  # NCCL pins host memory for its buffers
        service["ulimits"] = {"memlock": {"soft": -1, "hard": -1}}
    return service


def nginx_service(spec: ComposeSpec) -> dict[str, Any]:
    return {
        "image": NGINX_IMAGE,
        "volumes": ["./nginx/vkit.conf:/etc/nginx/conf.d/default.conf:ro"],
        # Started, not healthy: NGINX skips a replica that is down, so one slow or broken
        # GPU does not hold back the others (names are resolved at run time, see bundle).
        "depends_on": {
            replica_service_name(gpu_set): {"condition": "service_started"}
            for gpu_set in spec.gpu_sets
        },
        "healthcheck": wget_healthcheck(f"http://127.0.0.1:{NGINX_PORT}/nginx_health", "10s"),
        "restart": "unless-stopped",
        # SIGQUIT is NGINX's graceful stop (SIGTERM cuts open responses). It stops after the
        # gateway, its only client, has drained: as long as the replicas' drain is enough.
        "stop_signal": "SIGQUIT",
        "stop_grace_period": f"{stop_grace_s(spec.shutdown_timeout_s)}s",
        "networks": ["backend"],
    }


def gateway_routing(spec: ComposeSpec) -> tuple[dict[str, str], dict[str, Any]]:
    """The gateway's routing variables and what it waits for: NGINX (healthy), or with
    ``aware`` every replica (started, as NGINX waits: the router takes a down one out)."""
    if spec.routing == "round_robin":
        env = {"VKIT_GATEWAY_UPSTREAMS": f'["http://nginx:{NGINX_PORT}"]'}
        return env, {"nginx": {"condition": "service_healthy"}}
    names = [replica_service_name(gpu_set) for gpu_set in spec.gpu_sets]
    urls = ", ".join(f'"http://{name}:{VLLM_PORT}"' for name in names)
    env = {"VKIT_GATEWAY_UPSTREAMS": f"[{urls}]", "VKIT_GATEWAY_ROUTING": "aware"}
    return env, {name: {"condition": "service_started"} for name in names}


def gateway_service(spec: ComposeSpec, model: str = MODEL_VAR) -> dict[str, Any]:
    probe = http_probe(f"http://localhost:{GATEWAY_PORT}/livez")
    routing_env, upstream_deps = gateway_routing(spec)
    return {
        "image": spec.gateway_image,
        "build": {"context": "../..", "dockerfile": "deploy/docker/gateway.Dockerfile"},
        "environment": {
            "VKIT_GATEWAY_HOST": "0.0.0.0",
            "VKIT_GATEWAY_PORT": str(GATEWAY_PORT),
            "VKIT_GATEWAY_ADMIN_HOST": "0.0.0.0",
            "VKIT_GATEWAY_ADMIN_PORT": str(GATEWAY_ADMIN_PORT),
            **routing_env,
            "VKIT_GATEWAY_UPSTREAM_API_KEY": API_KEY_VAR,
            "VKIT_GATEWAY_KEYS_FILE": f"{KEYS_DIR_MOUNT}/{KEYS_FILE_NAME}",
            "VKIT_GATEWAY_REDIS_URL": "redis://redis:6379/0",
            "VKIT_GATEWAY_HEALTH__EXPECTED_MODELS": f'["{spec.model}"]',
            # The longest request, and so the graceful shutdown: stop_grace_period is above it.
            "VKIT_GATEWAY_TIMEOUTS__TOTAL": str(GATEWAY_TOTAL_TIMEOUT_S),
            # Prompts counted with the served model's own tokenizer, from the replicas' cache.
            "VKIT_GATEWAY_TOKENIZERS__MODELS": f'{{"{spec.model}": "{model}"}}',
            "VKIT_GATEWAY_TOKENIZERS__HF_CACHE": f"{GATEWAY_HF_MOUNT}/hub",
        },
        "volumes": [
            f"{KEYS_DIR_VAR}:{KEYS_DIR_MOUNT}:ro",
            f"{HF_CACHE_VOLUME}:{GATEWAY_HF_MOUNT}:ro",
        ],
        "ports": [f"${{VKIT_GATEWAY_PORT:-{GATEWAY_PORT}}}:{GATEWAY_PORT}"],
        "depends_on": {
            **upstream_deps,
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
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{stop_grace_s(GATEWAY_TOTAL_TIMEOUT_S)}s",
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
        "healthcheck": wget_healthcheck("http://127.0.0.1:9090/-/ready"),
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
        "healthcheck": wget_healthcheck("http://127.0.0.1:3000/api/health"),
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
