"""The compose file for a GPU box, as a dict: :func:`build_compose`.

    >>> spec = ComposeSpec(gpu="h200", gpu_ids=["0", "1", "2", "3"], tensor_parallel=2,
    ...                    model="llama-3.1-70b")
    >>> compose = build_compose(spec, plan)   # plan: plan_fit(FitRequest(tensor_parallel=2), ...)
    >>> [name for name in compose["services"] if name.startswith("vllm-")]
    ['vllm-0-1', 'vllm-2-3']

One vLLM service per GPU set (``vllm-<set>``: ``vllm-0``, or ``vllm-0-1`` with tensor
parallel 2; those GPUs reserved), NGINX over them, the gateway in front (the only published
port besides Grafana; its admin listener, which Prometheus scrapes, is not published), Redis
for shared limits, Prometheus, Grafana and NVIDIA's DCGM exporter. Every path is relative to
the compose file and inside its bundle (:mod:`vkit.render.bundle` writes them all): the
rendered NGINX site and Prometheus files, the replicas' supervisor (``vllm_supervisor.py``),
the alert rules and Grafana files, the gateway's build context (``build/gateway/``). Every
image is a ``.env`` variable with the pinned image as its default
(:func:`vkit.deployment.images.from_env`).

A replica's entrypoint is the supervisor, which runs vLLM as its child and exits when vLLM
stops answering ``/health`` (Docker itself does nothing about ``unhealthy``), so that
``restart:`` brings the container back. It also heals vLLM's start-up memory errors as
``vkit launch`` does (a shorter context, a lower utilization; ``--max-heals``).

Stopping (``docker compose down`` stops a service only after every service that depends on
it has stopped): the gateway first, which finishes its open responses (uvicorn's graceful
shutdown, up to ``timeouts.total``, set here), then NGINX (SIGQUIT: graceful), then the
replicas (vLLM's ``--shutdown-timeout`` drain). Each ``stop_grace_period`` is its drain plus a
margin (:meth:`vkit.deployment.DrainBudget.grace_s`), NGINX's that of the replicas. ``down -t
N`` overrides them all.

Routing (the gateway's ``routing``): ``round_robin`` (the default) sends everything through
NGINX; ``aware`` lists the replicas themselves as the gateway's upstreams (it routes by their
load and the prompt's prefix) and leaves NGINX out, which then has no client. With
``schedule`` (aware only) the gateway reads the replicas from a file the schedule's
follower rewrites, and holds requests while none is ready (:mod:`vkit.render.compose_schedule`).

Secrets are never rendered: ``${VAR:?message}`` makes ``docker compose`` refuse to start
without them; ``.env.example`` documents every variable.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_env, settings_from_values
from launcher.sizing.checkpoints import checkpoint_for
from launcher.sizing.fit import FitPlan
from launcher.sizing.gpu_sets import GpuSet, split_gpu_sets
from launcher.sizing.lora import lora_env
from vkit.deployment import Deployment, DrainBudget, Images, ReplicaGroup
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S, REPLICA_DRAIN_S
from vkit.deployment.images import COMPOSE_GATEWAY_IMAGE, from_env
from vkit.deployment.model import container_group
from vkit.deployment.service_ports import (
    GATEWAY_ADMIN_PORT,
    GATEWAY_PORT,
    NGINX_PORT,
    REDIS_PORT,
    VLLM_PORT,
    replica_url,
)
from vkit.render.alertmanager import alertmanager_service
from vkit.render.compose_cpu import CPU_IMAGE, cpu_group, cpu_replica, is_cpu, tokenizer_source
from vkit.render.compose_schedule import replicas_volume, schedule_gateway_values
from vkit.render.compose_services import (
    dcgm_service,
    edge_service,
    grafana_service,
    prometheus_service,
    redis_service,
)
from vkit.render.healthcheck import wget_healthcheck

VOLUMES = ("hf-cache", "vllm-cache", "prometheus-data", "grafana-data", "gateway-ledger")
VLLM_SERVER = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
# The supervisor (a file beside compose.yaml, stdlib only) runs VLLM_SERVER as its child.
SUPERVISOR_FILE = "vllm_supervisor.py"
SUPERVISOR_PATH = "/opt/vkit/vllm_supervisor.py"
MAX_HEALS = 2  # the supervisor's restarts after a healable start-up error, as `vkit launch`'s
# The gateway image's build context, inside the bundle (vkit.render.gateway_build).
GATEWAY_BUILD_CONTEXT = "build/gateway"
# Where the gateway sees the keys directory and the replicas' Hugging Face cache.
KEYS_DIR_MOUNT = "/etc/vkit/keys"
KEYS_FILE_NAME = "keys.yaml"
HF_CACHE_VOLUME = "hf-cache"
VLLM_HF_HOME = "/root/.cache/huggingface"  # the vLLM image's HF_HOME: the hub is below it
GATEWAY_HF_MOUNT = "/var/cache/huggingface"
# The gateway's usage ledger (SQLite, one gateway on the box): a named volume of its own,
# writable, apart from the read-only keys mount. The image makes the folder its user's, mode
# 0700 (gateway.Dockerfile), which Docker copies onto the empty volume at its first mount.
LEDGER_VOLUME = "gateway-ledger"
LEDGER_MOUNT = "/var/lib/vkit-gateway"
LEDGER_VALUES = {"enabled": True, "url": f"sqlite:///{LEDGER_MOUNT}/usage.sqlite3"}

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
# The gateway runs as its image's own user (uid 10001, not the file's owner) and reads
# keys.yaml (0640, `vkit keys add --group`) through this group, added to that user.
KEYS_GID_VAR = "${VKIT_KEYS_GID:?set VKIT_KEYS_GID to the numeric group of keys.yaml (id -g)}"


class ComposeSpec(BaseModel):
    """What the box is: GPU type and ids, the model, and how vLLM drains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU profile key in configs/gpus.yaml, e.g. rtx4090")
    gpu_ids: list[str] = Field(min_length=1, description="CUDA device ids (nvidia-smi's)")
    tensor_parallel: int = Field(default=1, ge=1, description="GPUs per replica")
    model: str = Field(description="served model name (a configs/models entry)")
    shutdown_timeout_s: int = Field(default=REPLICA_DRAIN_S, ge=1)
    gateway_image: str = COMPOSE_GATEWAY_IMAGE
    routing: Literal["round_robin", "aware"] = Field(
        default="round_robin", description="the gateway's routing: via NGINX, or replica-aware"
    )
    schedule: bool = Field(
        default=False,
        description="followed by `vkit schedule follow`: replicas from a discovery file",
    )

    @model_validator(mode="after")
    def _schedule_routes_aware(self) -> ComposeSpec:
        if self.schedule and self.routing != "aware":
            raise ValueError("a schedule needs routing aware (the gateway drops each replica)")
        return self

    @property
    def cpu(self) -> bool:
        """The CPU variant (``--gpu cpu``: ``gpu_ids`` are CPU cores, :mod:`.compose_cpu`)."""
        return is_cpu(self.gpu)

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


def replica_service_name(gpu_set: GpuSet, group: str | None = None) -> str:
    """``vllm-<set>``; with several groups, ``vllm-<group>-<set>`` (:func:`group_slug`)."""
    return f"vllm-{gpu_set.name}" if group is None else f"vllm-{group_slug(group)}-{gpu_set.name}"


def group_slug(served_model: str) -> str:
    """A served name as a service and variable name part: ``Llama.3/Chat`` -> ``llama-3-chat``."""
    return re.sub(r"[^a-z0-9]+", "-", served_model.lower()).strip("-") or "model"


def replica_services(deployment: Deployment) -> list[tuple[str, ReplicaGroup, GpuSet]]:
    """Every replica's service name, its group and its GPU set (or core)."""
    several = len(deployment.groups) > 1
    return [
        (replica_service_name(gpu_set, group.served_model if several else None), group, gpu_set)
        for group in deployment.groups
        for gpu_set in group.gpu_sets
    ]


def compose_deployment(spec: ComposeSpec, plan: FitPlan) -> Deployment:
    """The box as a :class:`~vkit.deployment.Deployment`: one replica group (one replica per
    GPU set, vLLM loading what ``VLLM_MODEL`` names) and the gateway's settings."""
    if spec.cpu:
        group = cpu_group(
            model=spec.model,
            plan=plan,
            cores=tuple(spec.gpu_sets),
            shutdown_timeout_s=spec.shutdown_timeout_s,
        )
    else:
        group = container_group(
            model=spec.model,
            served_model=spec.model,
            plan=plan,
            quant=plan.quant,
            shutdown_timeout_s=spec.shutdown_timeout_s,
            gpu_sets=tuple(spec.gpu_sets),
            load=served_model_var(spec, plan),
        )
    tokenizer = tokenizer_source(spec.model, GATEWAY_HF_MOUNT) if spec.cpu else None
    return Deployment(
        groups=(group,),
        gateway=gateway_settings(spec, tokenizer or group.load or MODEL_VAR),
        images=Images(gateway=spec.gateway_image, vllm_cpu=CPU_IMAGE),
        drain=DrainBudget(replica_s=spec.shutdown_timeout_s, gateway_s=GATEWAY_TOTAL_TIMEOUT_S),
    )


def build_compose(spec: ComposeSpec, plan: FitPlan) -> dict[str, Any]:
    """The whole compose file; each service gets fresh dicts (no YAML aliases)."""
    return compose_file(compose_deployment(spec, plan))


def compose_file(deployment: Deployment) -> dict[str, Any]:
    """The compose file of a deployment: every replica of every group, then the rest."""
    services: dict[str, Any] = {}
    for name, group, gpu_set in replica_services(deployment):
        service = vllm_service(deployment, group, gpu_set)
        if group.launch.cpu:  # cores, not GPUs: the CPU engine image runs vkit launch --cpu
            image = deployment.images.vllm_cpu
            service = cpu_replica(service, group, gpu_set, hf_home=VLLM_HF_HOME, image=image)
        services[name] = service
    if deployment.routing == "round_robin":  # aware: the gateway reaches the replicas itself
        services["nginx"] = nginx_service(deployment)
    services["gateway"] = gateway_service(deployment)
    gateway_grace_s = deployment.drain.grace_s(deployment.drain.gateway_s)
    services["edge"] = edge_service(deployment.images.nginx, gateway_grace_s)
    services["redis"] = redis_service()
    services["prometheus"] = prometheus_service()
    services["grafana"] = grafana_service()
    if not all(group.launch.cpu for group in deployment.groups):
        services["dcgm-exporter"] = dcgm_service()
    services["alertmanager"] = alertmanager_service()
    for service in services.values():  # each image can be pointed elsewhere from .env
        service["image"] = from_env(service["image"])
    return {
        "services": services,
        "networks": {"backend": {"driver": "bridge"}, "edge": {"driver": "bridge"}},
        "volumes": {name: {} for name in VOLUMES},
    }


def http_probe(url: str) -> str:
    """A healthcheck in Python (the vLLM and gateway images have it; curl is not certain)."""
    return f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"


def supervisor_entrypoint(
    policy: HealthPolicy = REPLICA_HEALTH, max_heals: int = MAX_HEALS
) -> list[str]:
    """The supervisor with the healthcheck's numbers and its start-up healing (restarts
    with a corrected flag), then the server it runs (the service's ``command``, vLLM's
    flags, follows)."""
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
        "--max-heals",
        str(max_heals),
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


def vllm_service(deployment: Deployment, group: ReplicaGroup, gpu_set: GpuSet) -> dict[str, Any]:
    """One replica of the group: the launcher's tuned flags as its ``command`` (no engine
    prefix: the supervisor runs the server)."""
    probe = http_probe(f"http://localhost:{VLLM_PORT}/health")
    policy = REPLICA_HEALTH
    service: dict[str, Any] = {
        "image": deployment.images.vllm,
        "entrypoint": supervisor_entrypoint(policy),
        "command": group.vllm_argv(engine=[]),
        "environment": {**vllm_environment(gpu_set), **lora_env(group.launch.lora)},
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
        "stop_grace_period": f"{deployment.drain.grace_s(deployment.drain.replica_s)}s",
        "networks": ["backend"],
    }
    if gpu_set.size > 1:  # NCCL pins host memory for its buffers
        service["ulimits"] = {"memlock": {"soft": -1, "hard": -1}}
    return service


def nginx_service(deployment: Deployment) -> dict[str, Any]:
    return {
        "image": deployment.images.nginx,
        "volumes": ["./nginx/vkit.conf:/etc/nginx/conf.d/default.conf:ro"],
        # Started, not healthy: NGINX skips a replica that is down, so one slow or broken
        # GPU does not hold back the others (names are resolved at run time, see bundle).
        "depends_on": {
            replica_service_name(gpu_set): {"condition": "service_started"}
            for gpu_set in deployment.group.gpu_sets
        },
        "healthcheck": wget_healthcheck(f"http://127.0.0.1:{NGINX_PORT}/nginx_health", "10s"),
        "restart": "unless-stopped",
        # SIGQUIT is NGINX's graceful stop (SIGTERM cuts open responses). It stops after the
        # gateway, its only client, has drained: as long as the replicas' drain is enough.
        "stop_signal": "SIGQUIT",
        "stop_grace_period": f"{deployment.drain.grace_s(deployment.drain.replica_s)}s",
        "networks": ["backend"],
    }


def gateway_settings(spec: ComposeSpec, model: str = MODEL_VAR) -> GatewaySettings:
    """The gateway's settings on the box. Routing: through NGINX, or with ``aware`` to every
    replica. ``model`` is where its tokenizer comes from (the ``VLLM_MODEL`` reference, which
    compose fills in), looked up in the replicas' cache; the vLLM key is a reference too."""
    values: dict[str, Any] = {
        "host": "0.0.0.0",
        "port": GATEWAY_PORT,
        "admin_host": "0.0.0.0",
        "admin_port": GATEWAY_ADMIN_PORT,
        "upstreams": [f"http://nginx:{NGINX_PORT}"],
        "upstream_api_key": API_KEY_VAR,
        "keys_file": f"{KEYS_DIR_MOUNT}/{KEYS_FILE_NAME}",
        "redis_url": f"redis://redis:{REDIS_PORT}/0",
        "ledger": LEDGER_VALUES,
        "health": {"expected_models": [spec.model]},
        # The longest request, and so the graceful shutdown: stop_grace_period is above it.
        "timeouts": {"total": GATEWAY_TOTAL_TIMEOUT_S},
        # Prompts counted with the served model's own tokenizer, from the replicas' cache.
        "tokenizers": {"models": {spec.model: model}, "hf_cache": f"{GATEWAY_HF_MOUNT}/hub"},
    }
    if spec.routing == "aware":
        names = [replica_service_name(gpu_set) for gpu_set in spec.gpu_sets]
        values["upstreams"] = [replica_url(name) for name in names]
        values["routing"] = "aware"
    if spec.schedule:  # vkit.render.compose_schedule: the follower drains through a file
        values.update(schedule_gateway_values())
    return settings_from_values(values)


def gateway_depends_on(deployment: Deployment) -> dict[str, Any]:
    """What the gateway waits for: NGINX (healthy), or with ``aware`` every replica
    (started, as NGINX waits: the router takes a down one out), and Redis."""
    if deployment.routing == "round_robin":
        upstreams: dict[str, Any] = {"nginx": {"condition": "service_healthy"}}
    else:
        names = [name for name, _, _ in replica_services(deployment)]
        upstreams = {name: {"condition": "service_started"} for name in names}
    return {**upstreams, "redis": {"condition": "service_healthy"}}


def gateway_service(deployment: Deployment) -> dict[str, Any]:
    probe = http_probe(f"http://localhost:{GATEWAY_PORT}/livez")
    volumes = [
        f"{KEYS_DIR_VAR}:{KEYS_DIR_MOUNT}:ro",
        f"{HF_CACHE_VOLUME}:{GATEWAY_HF_MOUNT}:ro",
        f"{LEDGER_VOLUME}:{LEDGER_MOUNT}",
    ]
    if deployment.gateway.discovery.file is not None:  # a schedule: its replicas directory
        volumes.append(replicas_volume())
    return {
        "image": deployment.images.gateway,
        "build": {"context": f"./{GATEWAY_BUILD_CONTEXT}"},
        "environment": settings_env(deployment.gateway),
        "group_add": [KEYS_GID_VAR],
        "volumes": volumes,
        # Clients come through the edge; the gateway's own port only on the host's loopback.
        "ports": [f"127.0.0.1:${{VKIT_GATEWAY_PORT:-{GATEWAY_PORT}}}:{GATEWAY_PORT}"],
        "depends_on": gateway_depends_on(deployment),
        "healthcheck": {
            "test": ["CMD", "python", "-c", probe],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "20s",
        },
        "restart": "unless-stopped",
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{deployment.drain.grace_s(deployment.drain.gateway_s)}s",
        "networks": ["backend", "edge"],
    }
