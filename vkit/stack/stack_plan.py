"""``plan_stack``: ``UpSettings`` in, the list of processes to start out. Pure.

The plan for N replicas is, in start order: N ``vkit launch`` replicas (CPU: each
pinned to its own cores, REFERENCE section 4), optional ``redis-server``, ``nginx``
round-robining across the replicas with the one template of ``nginx/``, and the
gateway (``vkit gateway``) in front of NGINX. With ``routing="aware"`` there is no
NGINX: the gateway's upstreams are the replicas and it routes by their load and the
prompts' prefixes (``VKIT_GATEWAY_ROUTING=aware``). Stop tiers run the other way: the
gateway closes first, then NGINX, then the replicas drain, then Redis.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_env, settings_from_values
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
    def keys_file(self) -> Path:
        return self.run_dir / "keys.yaml"

    @property
    def tiny_model_dir(self) -> Path:
        return self.run_dir / "tiny-llama"


@dataclass(frozen=True)
class StackPlan:
    specs: tuple[ProcessSpec, ...]
    nginx_conf: str
    gateway_url: str
    model_name: str

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
    replicas = [
        replica_spec(settings, layout, index, port, model_path, python, cpu_count)
        for index, port in enumerate(ports.replicas)
    ]
    redis = [] if ports.redis is None else [redis_spec(settings, layout, ports.redis)]
    upstreams = [f"{LOOPBACK}:{port}" for port in ports.replicas]
    conf = render_nginx_conf(upstreams, f"{LOOPBACK}:{ports.nginx}")
    nginx = [] if settings.routing == "aware" else [nginx_spec(settings, layout, ports.nginx)]
    specs = (*replicas, *redis, *nginx, gateway_spec(settings, layout, ports, python))
    return StackPlan(specs, conf, gateway_url(settings.host, ports.gateway), settings.model_name)


def gateway_url(host: str, port: int) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def replica_spec(
    settings: UpSettings,
    layout: StackLayout,
    index: int,
    port: int,
    model_path: str,
    python: str,
    cpu_count: int,
) -> ProcessSpec:
    argv = [python, "-m", "vkit", "launch", "--model", model_path]
    argv += ["--host", LOOPBACK, "--port", str(port)]
    argv += ["--served-model-name", settings.model_name]
    argv += ["--shutdown-timeout", f"{settings.shutdown_timeout_s:g}"]
    max_len = settings.max_model_len or (TINY_MAX_MODEL_LEN if settings.uses_tiny_model else None)
    if max_len is not None:
        argv += ["--max-model-len", str(max_len)]
    env: dict[str, str]
    if settings.gpu is None:
        argv += ["--cpu", "--enforce-eager"]
        env = {
            "VLLM_CPU_KVCACHE_SPACE": f"{settings.cpu_kvcache_gib:g}",
            "VLLM_CPU_OMP_THREADS_BIND": cpu_binding(index, settings.replicas, cpu_count),
        }
        if settings.uses_tiny_model:
            env["HF_HUB_OFFLINE"] = "1"
    else:
        argv += ["--gpu", settings.gpu]
        # PCI bus order: the index is the GPU nvidia-smi and DCGM call so (CUDA: fastest first)
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(index)}
    env["PYTHONUNBUFFERED"] = "1"  # the log tail shown on failure is up to date
    base = f"http://{LOOPBACK}:{port}"
    return ProcessSpec(
        name=f"replica-{index}",
        argv=tuple(argv),
        log_path=layout.logs / f"replica-{index}.log",
        env=env,
        ready=(VllmCheck(base, settings.model_name),),
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


def gateway_spec(
    settings: UpSettings, layout: StackLayout, ports: StackPorts, python: str
) -> ProcessSpec:
    env = {**settings_env(stack_gateway_settings(settings, layout, ports)), "PYTHONUNBUFFERED": "1"}
    argv = (python, "-m", "vkit", "gateway", "--host", settings.host, "--port", str(ports.gateway))
    url = gateway_url(settings.host, ports.gateway)
    return ProcessSpec(
        name="gateway",
        argv=argv,
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
    )


def gateway_settings(
    layout: StackLayout,
    model: str,
    *,
    nginx_port: int,
    redis_port: int | None,
    tokenizer: str | None = None,
    admin_port: int | None = None,
    aware_replicas: tuple[int, ...] | None = None,
) -> GatewaySettings:
    """The local gateway's settings. ``tokenizer``: the served model's directory or HF repo
    id, to count prompts with; ``admin_port``: its admin listener (``/metrics``, upstream
    states) on loopback; ``aware_replicas``: the replicas' ports, for the aware router (else
    NGINX's port)."""
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
    return settings_from_values(values)
