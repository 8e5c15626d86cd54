"""The systemd host's generated files: one ``vllm@SET`` instance per GPU set, NGINX over them,
and the gateway's settings, translated from the host's :class:`~vkit.deployment.Deployment`.

    >>> from launcher.sizing.gpu_sets import split_gpu_sets
    >>> gpu_sets = tuple(split_gpu_sets(["0", "1", "2", "3"], tensor_parallel=2))
    >>> group = ReplicaGroup(launch=LaunchSettings(model="m"), gpu_sets=gpu_sets,
    ...                      ports=replica_ports(8001, len(gpu_sets)))
    >>> replicas = replica_instances(group)
    >>> [(r.unit, r.upstream) for r in replicas]
    [('vllm@0-1.service', '127.0.0.1:8001'), ('vllm@2-3.service', '127.0.0.1:8002')]
    >>> print(replica_env(replicas[1]), end="")
    # vllm@2-3.service: GPUs 2,3 (nvidia-smi's numbers), tensor parallel 2. Written by install.sh.
    VKIT_REPLICA_PORT=8002
    CUDA_VISIBLE_DEVICES=2,3
    VKIT_TENSOR_PARALLEL=2

:func:`host_deployment` describes the host: one replica group (the profile's settings, one
GPU set and one loopback port per replica), the gateway's settings, ports and drain.
:func:`systemd_host_files` translates it into files keyed by their path below ``/``;
``install.sh`` installs each one (``vkit render systemd`` writes them into a staging
directory first). The units themselves (``deploy/systemd/*.service``) are static: an
instance runs ``vkit launch`` on the profile with its GPU set, port and tensor-parallel
size from ``/etc/vkit/replica-%i.env`` (the group's :meth:`~vkit.deployment.ReplicaGroup.
replica_launch`, a test says so).

The gateway's variables come from the deployment's one
:class:`~gateway.settings.GatewaySettings` value, split over three files:
``gateway-model.env`` (its tokenizers) and ``gateway-routing.env`` (routing and upstreams),
rewritten on every install, and ``gateway.env`` (everything else, written once).

Stopping: each unit's ``TimeoutStopSec=`` is its drain plus the margin of the deployment's
:class:`~vkit.deployment.DrainBudget` (vLLM's ``--shutdown-timeout`` for the replicas, the
gateway's ``timeouts.total`` for the gateway), in a drop-in beside the static unit:

    >>> drop_ins = drain_drop_ins(DrainBudget())
    >>> print(drop_ins[DROP_IN_DIR / "vllm@.service.d/vkit-drain.conf"], end="")
    # Written by install.sh: vLLM's drain (--shutdown-timeout 30 s) plus 15 s.
    [Service]
    TimeoutStopSec=45

Routing: ``round_robin`` (the default) puts NGINX over the replicas and the gateway in front of
NGINX; ``aware`` renders no NGINX site and lists the replicas' loopback ports as the gateway's
upstreams (``/etc/vkit/gateway-routing.env``, rewritten on every install).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gateway.settings import ENV_PREFIX, GatewaySettings, load_settings
from gateway.settings_env import NESTED_DELIMITER, settings_env, settings_from_values
from launcher.sizing.fit import FitPlan
from launcher.sizing.gpu_sets import GpuSet
from launcher.supervision.launch_spec import LaunchSettings
from vkit.deployment import Deployment, DrainBudget, Ports, ReplicaGroup, Routing
from vkit.nginx_conf import render_nginx_site

REPLICA_HOST = "127.0.0.1"
ETC_VKIT = PurePosixPath("etc/vkit")
NGINX_SITE = PurePosixPath("etc/nginx/sites-available/vkit.conf")
GATEWAY_MODEL_ENV = ETC_VKIT / "gateway-model.env"
GATEWAY_ROUTING_ENV = ETC_VKIT / "gateway-routing.env"
# What install.sh copies to gateway.env where there is none yet (never over yours).
GATEWAY_HOST_ENV = ETC_VKIT / "gateway.env.default"
ETC_VKIT_ROOT = PurePosixPath("/") / ETC_VKIT
# The gateway's StateDirectory= (vkit-gateway.service): the usage ledger's SQLite file,
# vkit:vkit 0700, created by systemd at start; apart from the replicas' /var/lib/vkit.
GATEWAY_STATE_DIR = PurePosixPath("/var/lib/vkit-gateway")
# Where the units and their drop-ins (UNIT.d/*.conf) go.
DROP_IN_DIR = PurePosixPath("etc/systemd/system")
DRAIN_DROP_IN = "vkit-drain.conf"
# Which of the gateway's settings each file holds (gateway.env: all the others).
# health: which models a replica must list to be ready (set by a deployment file's groups).
MODEL_FIELDS = ("tokenizers", "health")
ROUTING_FIELDS = ("upstreams", "routing")


@dataclass(frozen=True)
class ReplicaInstance:
    """One ``vllm@NAME`` instance: the GPU set it owns and the loopback port it serves on.
    A replica of a deployment file's group is ``vllm@GROUP-SET`` (two groups may share a
    GPU set); a single-model host's is ``vllm@SET``."""

    gpu_set: GpuSet
    port: int
    group: str = ""  # the group's slug, on a host of a deployment file

    @property
    def name(self) -> str:
        return f"{self.group}-{self.gpu_set.name}" if self.group else self.gpu_set.name

    @property
    def unit(self) -> str:
        return f"vllm@{self.name}.service"

    @property
    def upstream(self) -> str:
        return f"{REPLICA_HOST}:{self.port}"

    @property
    def env_path(self) -> PurePosixPath:
        return ETC_VKIT / f"replica-{self.name}.env"


@dataclass(frozen=True)
class ModelTokenizer:
    """Where the gateway finds the served model's tokenizer: ``source`` is what vLLM loads
    it from (a Hugging Face repo id, looked up in ``hf_cache``, or a model directory)."""

    served_name: str
    source: str
    hf_cache: PurePosixPath


def replica_ports(base_port: int, count: int) -> tuple[int, ...]:
    """Replica ``i`` listens on ``base_port + i``."""
    last = base_port + count - 1
    if base_port < 1 or last > 65535:
        raise ValueError(f"replica ports {base_port}-{last} are not all in 1-65535")
    return tuple(range(base_port, base_port + count))


def replica_instances(group: ReplicaGroup, slug: str = "") -> list[ReplicaInstance]:
    """One ``vllm@`` instance per GPU set of the group, on that replica's port (named after
    the group's ``slug`` where one is given)."""
    return [
        ReplicaInstance(gpu_set, port, slug)
        for gpu_set, port in zip(group.gpu_sets, group.ports, strict=True)
    ]


def host_deployment(
    launch: LaunchSettings,
    plan: FitPlan | None,
    gpu_sets: Sequence[GpuSet],
    *,
    base_port: int,
    listen: str,
    tokenizer: ModelTokenizer,
    routing: Routing,
) -> Deployment:
    """The host as a :class:`~vkit.deployment.Deployment`: one replica per GPU set, each
    running ``launch`` on loopback at its own port; the gateway's settings (what its three
    env files add up to) with NGINX's ``listen`` as its upstream (``round_robin``)."""
    group = ReplicaGroup(
        launch=launch.model_copy(update={"host": REPLICA_HOST}),
        plan=plan,
        gpu_sets=tuple(gpu_sets),
        ports=replica_ports(base_port, len(gpu_sets)),
    )
    ports = Ports()
    replicas = replica_instances(group)
    gateway = gateway_settings(
        replicas, listen=listen, tokenizer=tokenizer, routing=routing, ports=ports
    )
    drain = {"gateway_s": gateway_drain_s(gateway)}
    if launch.shutdown_timeout is not None:
        drain["replica_s"] = launch.shutdown_timeout
    return Deployment(groups=(group,), gateway=gateway, ports=ports, drain=DrainBudget(**drain))


def gateway_drain_s(gateway: GatewaySettings) -> int:
    """The gateway drains for its longest request (uvicorn's graceful shutdown is that too)."""
    return math.ceil(gateway.timeouts.total)


def replica_env(replica: ReplicaInstance, extra: Mapping[str, str] | None = None) -> str:
    """``/etc/vkit/replica-NAME.env``: what ``vllm@NAME`` reads (its ExecStart and CUDA),
    then the ``extra`` variables (a group's profile path and engine environment)."""
    gpus = replica.gpu_set
    return (
        f"# {replica.unit}: GPUs {gpus.cuda_visible_devices} (nvidia-smi's numbers), "
        f"tensor parallel {gpus.size}. Written by install.sh.\n"
        f"VKIT_REPLICA_PORT={replica.port}\n"
        f"CUDA_VISIBLE_DEVICES={gpus.cuda_visible_devices}\n"
        f"VKIT_TENSOR_PARALLEL={gpus.size}\n"
    ) + "".join(f"{name}={_env_value(value)}\n" for name, value in (extra or {}).items())


def gateway_model_values(tokenizer: ModelTokenizer) -> dict[str, Any]:
    """The gateway's ``tokenizers`` settings for the model."""
    models = {tokenizer.served_name: tokenizer.source}
    return {"tokenizers": {"models": models, "hf_cache": str(tokenizer.hf_cache)}}


def gateway_routing_values(
    replicas: list[ReplicaInstance], *, listen: str, routing: Routing
) -> dict[str, Any]:
    """The gateway's ``routing`` and its upstreams (NGINX's ``listen``, or with ``aware``
    every replica's loopback port)."""
    if routing == "aware":
        upstreams = [f"http://{r.upstream}" for r in replicas]
    else:
        upstreams = [f"http://{listen}"]
    return {"upstreams": upstreams, "routing": routing}


def gateway_host_values(ports: Ports) -> dict[str, Any]:
    """The gateway's listeners, keys file, Redis and usage ledger on the host
    (``gateway.env``, written once: the operator's own settings go there)."""
    return {
        # Loopback: clients reach it through the edge (NGINX with TLS, vkit-edge.conf).
        "host": REPLICA_HOST,
        "port": ports.gateway,
        # The admin listener (/metrics for Prometheus, /readyz details, /openapi.json):
        # loopback only.
        "admin_host": REPLICA_HOST,
        "admin_port": ports.gateway_admin,
        "keys_file": str(ETC_VKIT_ROOT / "keys.yaml"),
        "redis_url": f"redis://{REPLICA_HOST}:{ports.redis}/0",
        # One gateway per host: its usage ledger in SQLite, in the unit's StateDirectory=.
        "ledger": {"enabled": True, "url": f"sqlite:///{GATEWAY_STATE_DIR}/usage.sqlite3"},
    }


def gateway_settings(
    replicas: list[ReplicaInstance],
    *,
    listen: str,
    tokenizer: ModelTokenizer,
    routing: Routing,
    ports: Ports,
) -> GatewaySettings:
    """The gateway's whole settings on the host: what its three env files add up to."""
    return settings_from_values(
        {
            **gateway_host_values(ports),
            **gateway_routing_values(replicas, listen=listen, routing=routing),
            **gateway_model_values(tokenizer),
        }
    )


def field_variables(env: Mapping[str, str], fields: Collection[str]) -> dict[str, str]:
    """The variables of the settings' ``fields`` among ``env``, in its order."""
    names = tuple(ENV_PREFIX + field.upper() for field in fields)
    sections = tuple(name + NESTED_DELIMITER for name in names)
    return {
        name: value for name, value in env.items() if name in names or name.startswith(sections)
    }


def env_file_lines(env: dict[str, str], fields: Collection[str]) -> str:
    """``NAME=value`` lines of the variables of the settings' ``fields`` among ``env``
    (:func:`gateway.settings_env.settings_env`'s, in its order)."""
    return "".join(
        f"{name}={_env_value(value)}\n" for name, value in field_variables(env, fields).items()
    )


_ENV_LINE = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(.*?)\s*$")


def environment_file_values(text: str) -> dict[str, str]:
    """``NAME=value`` assignments of a systemd ``EnvironmentFile=``, later ones winning:
    ``#``/``;`` comment lines skipped, a value in matching quotes taken as it is between
    them, an unquoted one with ``\\\\`` read as one backslash (as :func:`_env_value` writes it)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match is None or line.lstrip().startswith(("#", ";")):
            continue
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            values[name] = value[1:-1]
        else:
            values[name] = value.replace("\\\\", "\\")
    return values


def host_gateway_settings(rendered: GatewaySettings, gateway_env: str) -> GatewaySettings:
    """The settings the gateway unit runs with: the rendered model and routing files, then
    the host's own ``gateway.env`` (read last, so it wins). Raises ``ValueError`` (pydantic's
    ``ValidationError`` or :class:`gateway.settings.UnknownSetting`) for a bad variable."""
    env = field_variables(settings_env(rendered), (*MODEL_FIELDS, *ROUTING_FIELDS))
    return load_settings(environ={**env, **environment_file_values(gateway_env)})


def gateway_model_env(env: dict[str, str]) -> str:
    """``/etc/vkit/gateway-model.env``: the gateway's ``tokenizers`` settings for the model."""
    return (
        "# Written by install.sh from the replicas' profile, on every install (your own\n"
        "# settings go in gateway.env, which the unit reads after this file). The gateway\n"
        "# counts prompt tokens with the served model's tokenizer, from the Hugging Face\n"
        "# cache the replicas download into (HF_HOME of vllm@.service, plus /hub).\n"
    ) + env_file_lines(env, MODEL_FIELDS)


def gateway_routing_env(env: dict[str, str], routing: Routing) -> str:
    """``/etc/vkit/gateway-routing.env``: the gateway's routing and upstreams."""
    return (
        f"# Written by install.sh (--routing {routing}) on every install; gateway.env, read\n"
        "# after this file, wins: leave routing and upstreams out of it.\n"
    ) + env_file_lines(env, ROUTING_FIELDS)


def gateway_host_env(env: dict[str, str]) -> str:
    """``/etc/vkit/gateway.env`` as a first install writes it (never overwritten): the
    gateway's settings that are neither the model's nor the routing's."""
    others = set(GatewaySettings.model_fields) - {*MODEL_FIELDS, *ROUTING_FIELDS}
    return (
        "# The gateway's own settings: written once by install.sh, then yours (read last).\n"
        "# The admin listener (/metrics for Prometheus, /readyz details, /openapi.json) stays\n"
        "# on loopback. Routing and upstreams: gateway-routing.env (install.sh --routing).\n"
    ) + env_file_lines(env, others)


def drain_drop_ins(drain: DrainBudget) -> dict[PurePosixPath, str]:
    """Each unit's ``TimeoutStopSec=``: its drain plus the budget's margin, as drop-ins
    (``UNIT.d/vkit-drain.conf``) that install.sh puts beside the static units."""
    stops = {
        "vllm@.service": (
            f"vLLM's drain (--shutdown-timeout {drain.replica_s} s)",
            drain.replica_s,
        ),
        "vkit-gateway.service": (
            f"the gateway's drain (timeouts.total {drain.gateway_s} s)",
            drain.gateway_s,
        ),
    }
    return {
        DROP_IN_DIR / f"{name}.d" / DRAIN_DROP_IN: (
            f"# Written by install.sh: {what} plus {drain.margin_s} s.\n"
            f"[Service]\nTimeoutStopSec={drain.grace_s(drain_s)}\n"
        )
        for name, (what, drain_s) in stops.items()
    }


def systemd_host_files(
    deployment: Deployment,
    *,
    listen: str,
    replica_files: Mapping[PurePosixPath, str] | None = None,
) -> dict[PurePosixPath, str]:
    """Every generated file, by its path below ``/``: each replica's env file (or, for a
    deployment file's groups, ``replica_files``: :func:`vkit.render.systemd_groups.group_files`),
    the NGINX site on ``listen`` (one server per replica; none with ``aware``), the gateway's
    model and routing settings, the first install's ``gateway.env`` (install.sh writes it
    only where none is) and the units' drain drop-ins."""
    if replica_files is None:
        replica_files = {
            replica.env_path: replica_env(replica)
            for group in deployment.groups
            for replica in replica_instances(group)
        }
    files = dict(replica_files)
    if deployment.routing == "round_robin":  # NGINX round-robins over one model's replicas
        upstreams = [r.upstream for r in replica_instances(deployment.group)]
        files[NGINX_SITE] = render_nginx_site(upstreams, listen)
    env = settings_env(deployment.gateway)
    files[GATEWAY_MODEL_ENV] = gateway_model_env(env)
    files[GATEWAY_ROUTING_ENV] = gateway_routing_env(env, deployment.routing)
    files[GATEWAY_HOST_ENV] = gateway_host_env(env)
    files.update(drain_drop_ins(deployment.drain))
    return files


def _env_value(value: str) -> str:
    """A value for a systemd ``EnvironmentFile=`` line, unquoted: systemd drops one level of
    backslashes there, and a value may not span lines."""
    if "\n" in value or value[:1] in ("'", '"'):
        raise ValueError(f"not writable as one unquoted EnvironmentFile value: {value!r}")
    return value.replace("\\", "\\\\")
