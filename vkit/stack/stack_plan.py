"""``plan_stack``: ``UpSettings`` in, the list of processes to start out. Pure.

``UpSettings`` become a :class:`~vkit.deployment.Deployment` (:func:`stack_deployment`),
which ``plan_stack`` translates into processes: each replica group's replicas run
``vkit launch`` with the flags of their settings
(:func:`~vkit.deployment.launch_args.launch_args`), the gateway gets its settings as
variables (:func:`~gateway.settings_env.settings_env`).

The plan for N replicas is, in start order: N ``vkit launch`` replicas (CPU: each
pinned to its own cores, docs/cpu-engine.md#cpu-pinning), optional ``redis-server``, ``nginx``
round-robining across the replicas with the one template of ``nginx/``, and the
gateway (``vkit gateway``) in front of NGINX, and with ``settings.uses_edge`` the edge
(NGINX from :mod:`vkit.edge_conf`) on the public address with the gateway behind it on
loopback. With ``routing="aware"`` there is no NGINX over the replicas: the gateway's
upstreams are the replicas and it routes by their load and the prompts' prefixes
(``VKIT_GATEWAY_ROUTING=aware``). Stop tiers run the other way: the edge closes first
(gracefully), then the gateway, then NGINX, then the replicas drain, then Redis.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings, TimeoutSettings
from gateway.settings_env import settings_env, settings_from_values
from launcher.sizing.gpu_sets import GpuSet
from launcher.sizing.lora import lora_env
from launcher.supervision.launch_spec import LaunchSettings
from vkit.deployment import Deployment, DrainBudget, Ports, ReplicaGroup
from vkit.deployment.launch_args import launch_args
from vkit.edge_conf import EdgeLimits, EdgeTls, render_edge_conf
from vkit.nginx_conf import nginx_argv, render_nginx_conf
from vkit.stack.specs import HttpCheck, ProcessSpec, TcpCheck, VllmCheck
from vkit.stack.up_settings import TINY_MAX_MODEL_LEN, UpSettings

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class StackPorts:
    gateway: int
    nginx: int
    replicas: tuple[int, ...]
    redis: int | None = None
    gateway_admin: int | None = None  # the gateway's admin listener (/metrics), loopback
    edge: int | None = None  # the public port, when the edge is in front of the gateway


@dataclass(frozen=True)
class StackLayout:
    """Where a run keeps its files (all under the run directory)."""

    run_dir: Path

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def nginx_prefix(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_prefix / "nginx.conf"

    @property
    def edge_prefix(self) -> Path:
        return self.run_dir / "edge"

    @property
    def edge_conf(self) -> Path:
        return self.edge_prefix / "nginx.conf"

    @property
    def tls_cert(self) -> Path:
        """A first run's self-signed certificate (kept between runs)."""
        return self.run_dir / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.run_dir / "tls" / "key.pem"

    @property
    def keys_file(self) -> Path:
        return self.run_dir / "keys.yaml"

    @property
    def replicas_file(self) -> Path:
        """The replicas the gateway serves, one URL a line (its discovery file, ``--schedule``)."""
        return self.run_dir / "replicas.txt"

    @property
    def tiny_model_dir(self) -> Path:
        return self.run_dir / "tiny-llama"


@dataclass(frozen=True)
class StackPlan:
    specs: tuple[ProcessSpec, ...]
    nginx_conf: str
    gateway_url: str
    model_name: str
    edge_conf: str | None = None  # the edge's nginx.conf, when it is in front

    def named(self, prefix: str) -> list[ProcessSpec]:
        return [spec for spec in self.specs if spec.name.startswith(prefix)]


def cpu_binding(index: int, replicas: int, cpu_count: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for replica ``index``: its own block of cores.

    With fewer cores than replicas, replica i takes core ``i % cpu_count``.
    """
    per_replica = max(1, cpu_count // replicas)
    if per_replica == 1:
        return str(index % cpu_count)
    first = index * per_replica
    return f"{first}-{first + per_replica - 1}"


def plan_stack(
    settings: UpSettings,
    ports: StackPorts,
    layout: StackLayout,
    *,
    model_path: str,
    python: str,
    cpu_count: int,
) -> StackPlan:
    """The processes of :func:`stack_deployment`: its replicas (``vkit launch``), Redis,
    NGINX (round-robin only) and the gateway."""
    deployment = stack_deployment(settings, ports, layout, model_path=model_path)
    replicas = replica_specs(deployment, settings, layout, python, cpu_count)
    redis = [] if ports.redis is None else [redis_spec(settings, layout, deployment.ports.redis)]
    group = deployment.group  # NGINX round-robins over one model's replicas
    upstreams = [f"{LOOPBACK}:{port}" for port in group.ports]
    conf = render_nginx_conf(upstreams, f"{LOOPBACK}:{deployment.ports.nginx}")
    nginx = []
    if deployment.routing == "round_robin":
        nginx = [nginx_spec(settings, layout, deployment.ports.nginx)]
    behind_edge = ports.edge is not None
    gateway_host = LOOPBACK if behind_edge else settings.host
    gateway = gateway_process(
        deployment.gateway, gateway_host, deployment.ports.gateway, layout, python
    )
    if ports.edge is None:
        specs = (*replicas, *redis, *nginx, gateway)
        url = gateway_url(settings.host, deployment.ports.gateway)
        return StackPlan(specs, conf, url, group.served_model)
    edge_conf = stack_edge_conf(settings, layout, deployment.gateway, ports.gateway, ports.edge)
    edge = edge_spec(settings, layout, ports.edge)
    url = gateway_url(settings.host, ports.edge, tls=settings.uses_tls)
    return StackPlan(
        (*replicas, *redis, *nginx, edge, gateway), conf, url, group.served_model, edge_conf
    )


def stack_edge_conf(
    settings: UpSettings,
    layout: StackLayout,
    gateway: GatewaySettings,
    gateway_port: int,
    edge_port: int,
) -> str:
    """The edge's nginx.conf: ``--host:--port`` in front of the gateway on loopback, its
    limits from the gateway's settings, TLS with the given pair or the run's own."""
    tls = None
    if settings.uses_tls:
        cert, key = settings.tls_cert, settings.tls_key
        if cert is None or key is None:
            cert, key = layout.tls_cert, layout.tls_key
        tls = EdgeTls(cert.resolve(), key.resolve())
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    limits = EdgeLimits.for_gateway(gateway)
    return render_edge_conf(f"{LOOPBACK}:{gateway_port}", f"{host}:{edge_port}", limits, tls=tls)


def stack_deployment(
    settings: UpSettings, ports: StackPorts, layout: StackLayout, *, model_path: str
) -> Deployment:
    """The local stack as a :class:`~vkit.deployment.Deployment`: one replica group (one
    ``vkit launch`` per port on loopback; on a GPU, replica ``i`` owns GPU ``i``), the
    gateway's settings for this run's ports, and the replicas' drain."""
    launch = replica_launch_settings(settings, model_path)
    if launch.cpu:
        group = ReplicaGroup(launch=launch, replicas=len(ports.replicas), ports=ports.replicas)
    else:
        gpu_sets = tuple(GpuSet((str(index),)) for index in range(len(ports.replicas)))
        group = ReplicaGroup(launch=launch, gpu_sets=gpu_sets, ports=ports.replicas)
    optional = {"redis": ports.redis, "gateway_admin": ports.gateway_admin}
    return Deployment(
        groups=(group,),
        gateway=stack_gateway_settings(settings, layout, ports),
        ports=Ports(
            gateway=ports.gateway,
            nginx=ports.nginx,
            **{name: port for name, port in optional.items() if port is not None},
        ),
        drain=DrainBudget(replica_s=launch.shutdown_timeout or 0),
    )


def replica_launch_settings(settings: UpSettings, model_path: str) -> LaunchSettings:
    """What every replica's ``vkit launch`` is given (its port: :attr:`ReplicaGroup.ports`):
    the CPU engine without CUDA graphs (faster start), the tiny model's short context."""
    fields: dict[str, Any] = {
        "model": model_path,
        "host": LOOPBACK,
        "served_model_name": settings.model_name,
        "shutdown_timeout": settings.shutdown_timeout_s,
    }
    max_len = settings.max_model_len or (TINY_MAX_MODEL_LEN if settings.uses_tiny_model else None)
    if max_len is not None:
        fields["max_model_len"] = max_len
    if settings.gpu is None:
        fields.update(cpu=True, enforce_eager=True)
    else:
        fields["gpu"] = settings.gpu
    return LaunchSettings(**fields)


def gateway_url(host: str, port: int, *, tls: bool = False) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "::", "") else host
    if tls and shown == LOOPBACK:
        shown = "localhost"  # a name the run's own certificate carries
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def replica_specs(
    deployment: Deployment, settings: UpSettings, layout: StackLayout, python: str, cpu_count: int
) -> list[ProcessSpec]:
    """Every group's replicas, numbered across the groups (CPU: the cores split among all)."""
    total = sum(group.replica_count for group in deployment.groups)
    specs: list[ProcessSpec] = []
    for group in deployment.groups:
        for index in range(group.replica_count):
            number = len(specs)
            env = replica_env(settings, group, index, cpu_binding(number, total, cpu_count))
            specs.append(replica_spec(group, index, number, layout, python, env))
    return specs


def replica_env(
    settings: UpSettings, group: ReplicaGroup, index: int, cpu_bind: str
) -> dict[str, str]:
    """A replica's environment: the CPU engine's KV cache and cores, or its GPU."""
    env: dict[str, str]
    if group.launch.cpu:
        env = {
            "VLLM_CPU_KVCACHE_SPACE": f"{settings.cpu_kvcache_gib:g}",
            "VLLM_CPU_OMP_THREADS_BIND": cpu_bind,
        }
        if settings.uses_tiny_model:
            env["HF_HUB_OFFLINE"] = "1"
    else:
        gpus = group.gpu_sets[index].cuda_visible_devices
        # PCI bus order: the index is the GPU nvidia-smi and DCGM call so (CUDA: fastest first)
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": gpus}
    env["PYTHONUNBUFFERED"] = "1"  # the log tail shown on failure is up to date
    return {**env, **lora_env(group.launch.lora)}


def replica_spec(
    group: ReplicaGroup,
    index: int,
    number: int,
    layout: StackLayout,
    python: str,
    env: dict[str, str],
) -> ProcessSpec:
    """Replica ``index`` of ``group`` (``replica-NUMBER``): ``vkit launch`` with the flags
    of its settings (:func:`~vkit.deployment.launch_args.launch_args`)."""
    launch = group.replica_launch(index)
    return ProcessSpec(
        name=f"replica-{number}",
        argv=(python, "-m", "vkit", "launch", *launch_args(launch)),
        log_path=layout.logs / f"replica-{number}.log",
        env=env,
        ready=(VllmCheck(f"http://{LOOPBACK}:{launch.port}", group.served_model),),
        stop_tier=2,
    )


def redis_spec(settings: UpSettings, layout: StackLayout, port: int) -> ProcessSpec:
    argv = [settings.redis_bin, "--bind", LOOPBACK, "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(layout.run_dir.resolve())]
    return ProcessSpec(
        name="redis",
        argv=tuple(argv),
        log_path=layout.logs / "redis.log",
        ready=(TcpCheck(LOOPBACK, port),),
        stop_tier=3,
    )


def nginx_spec(settings: UpSettings, layout: StackLayout, port: int) -> ProcessSpec:
    argv = nginx_argv(layout.nginx_conf, layout.nginx_prefix, binary=settings.nginx_bin)
    return ProcessSpec(
        name="nginx",
        argv=tuple(argv),
        log_path=layout.nginx_prefix / "error.log",  # nginx_argv sends its errors there
        ready=(HttpCheck(f"http://{LOOPBACK}:{port}/nginx_health"),),
        stop_signal=signal.SIGQUIT,  # graceful: finish the requests in flight
        stop_tier=1,
    )


def edge_spec(settings: UpSettings, layout: StackLayout, port: int) -> ProcessSpec:
    """The edge NGINX; ready once it listens (it answers 502 until the gateway is up)."""
    argv = nginx_argv(layout.edge_conf, layout.edge_prefix, binary=settings.nginx_bin)
    probe_host = LOOPBACK if settings.host in ("0.0.0.0", "::", "") else settings.host
    return ProcessSpec(
        name="edge",
        argv=tuple(argv),
        log_path=layout.edge_prefix / "error.log",
        ready=(TcpCheck(probe_host, port),),
        stop_signal=signal.SIGQUIT,  # graceful: answers in flight finish
        stop_tier=-1,  # before the gateway: no new clients while it drains
    )


def gateway_spec(
    settings: UpSettings, layout: StackLayout, ports: StackPorts, python: str
) -> ProcessSpec:
    """The gateway of these settings on these ports (:func:`stack_gateway_settings`)."""
    gateway = stack_gateway_settings(settings, layout, ports)
    return gateway_process(gateway, settings.host, ports.gateway, layout, python)


def gateway_process(
    gateway: GatewaySettings, host: str, port: int, layout: StackLayout, python: str
) -> ProcessSpec:
    """``vkit gateway`` on ``host:port``, its settings as ``VKIT_GATEWAY_*`` variables."""
    env = {**settings_env(gateway), "PYTHONUNBUFFERED": "1"}
    url = gateway_url(host, port)
    return ProcessSpec(
        name="gateway",
        argv=(python, "-m", "vkit", "gateway", "--host", host, "--port", str(port)),
        log_path=layout.logs / "gateway.log",
        env=env,
        ready=(HttpCheck(f"{url}/readyz"),),
        stop_tier=0,
    )


def stack_gateway_settings(
    settings: UpSettings, layout: StackLayout, ports: StackPorts
) -> GatewaySettings:
    """The local gateway's settings (:func:`gateway_settings`) for this run's ports: the
    tokenizer is the tiny model's directory or the model itself."""
    tokenizer = str(layout.tiny_model_dir) if settings.uses_tiny_model else settings.model
    return gateway_settings(
        layout,
        settings.model_name,
        nginx_port=ports.nginx,
        redis_port=ports.redis,
        tokenizer=tokenizer,
        admin_port=ports.gateway_admin,
        aware_replicas=ports.replicas if settings.routing == "aware" else None,
        hold_s=schedule_hold_s(settings),
        replicas_file=layout.replicas_file if settings.schedule is not None else None,
    )


def schedule_hold_s(settings: UpSettings) -> float | None:
    """With ``--schedule``, how long the gateway holds a request while no replica is ready
    (a floor of zero, or the first replica starting again): a replica's start-up budget, but
    at most half the gateway's whole-request timeout, which the wait counts toward."""
    if settings.schedule is None:
        return None
    return min(settings.startup_timeout_s, TimeoutSettings().total / 2)


# How often the gateway reads the replicas file under ``--schedule``; a replica leaves the
# file this long twice (plus a second) before it is stopped, so that nothing new reaches it.
REPLICAS_FILE_INTERVAL_S = 1.0


def gateway_settings(
    layout: StackLayout,
    model: str,
    *,
    nginx_port: int,
    redis_port: int | None,
    tokenizer: str | None = None,
    admin_port: int | None = None,
    aware_replicas: tuple[int, ...] | None = None,
    hold_s: float | None = None,
    replicas_file: Path | None = None,
) -> GatewaySettings:
    """The local gateway's settings. ``tokenizer``: the served model's directory or HF repo
    id, to count prompts with; ``admin_port``: its admin listener (``/metrics``, upstream
    states) on loopback; ``aware_replicas``: the replicas' ports, for the aware router (else
    NGINX's port); ``hold_s``: how long a request waits while no replica is ready;
    ``replicas_file``: the replicas it serves, read again every second (``--schedule``)."""
    ports = [nginx_port] if aware_replicas is None else list(aware_replicas)
    values: dict[str, Any] = {
        "upstreams": [f"http://{LOOPBACK}:{port}" for port in ports],
        "keys_file": str(layout.keys_file),
        "health": {"expected_models": [model]},
    }
    if redis_port is not None:
        values["redis_url"] = f"redis://{LOOPBACK}:{redis_port}/0"
    if tokenizer is not None:
        values["tokenizers"] = {"models": {model: tokenizer}}
    if aware_replicas is not None:
        values["routing"] = "aware"
    if admin_port is not None:
        values["admin_host"] = LOOPBACK
        values["admin_port"] = admin_port
    if hold_s is not None:
        values["hold"] = {"max_wait": hold_s}
    if replicas_file is not None:
        values["discovery"] = {"file": str(replicas_file), "interval": REPLICAS_FILE_INTERVAL_S}
    return settings_from_values(values)
