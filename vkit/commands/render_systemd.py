"""``vkit render systemd``: the systemd host's generated files, for ``install.sh``.

    vkit render systemd --profile /etc/vkit/replica.yaml --gpus 0,1,2,3 --tp 2 \\
        --hf-home /var/lib/vkit/huggingface --out STAGE
    vkit render systemd --deployment models.yaml --out STAGE

Groups the GPU ids into tensor-parallel sets (:func:`launcher.sizing.gpu_sets.split_gpu_sets`),
solves the profile's fit for one set with ``vkit launch``'s own resolver (the set's size is
the tensor-parallel size: a model that does not fit is refused here, not by a unit that
restarts forever), and writes below ``--out`` the files of :mod:`vkit.render.systemd`, by
their path below ``/``. ``--tp`` wins over the profile's ``tensor_parallel`` (default 1).
``--gateway-env`` is the host's own ``/etc/vkit/gateway.env`` (install.sh passes it where
one is): the gateway's stop timeout follows the total timeout it sets, and a variable there
that the gateway would refuse is refused here, before anything is installed.

``--deployment FILE`` renders a deployment file's groups instead (each fit on its own GPUs,
:mod:`vkit.render.systemd_groups`): instances ``vllm@GROUP-SET``, each group's profile, the
gateway routing ``aware`` to every replica.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from launcher.sizing.gpu_sets import split_gpu_sets
from launcher.supervision.launch_spec import LaunchSettings, LaunchSpec, resolve_launch
from launcher.supervision.profiles import load_profile
from launcher.supervision.vllm_args import VllmOptions, split_flags
from vkit.commands.launch import served_model
from vkit.deployment import Deployment
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.group_fit import fit_groups
from vkit.deployment.service_ports import NGINX_PORT, REPLICA_BASE_PORT
from vkit.exit_codes import UsageError
from vkit.render.bundle import write_files
from vkit.render.compose import group_slug
from vkit.render.systemd import (
    REPLICA_HOST,
    ModelTokenizer,
    gateway_drain_s,
    host_deployment,
    host_gateway_settings,
    replica_instances,
    systemd_host_files,
)
from vkit.render.systemd_groups import group_files, systemd_groups

NGINX_LISTEN = f"{REPLICA_HOST}:{NGINX_PORT}"


class SystemdArgs(BaseModel):
    """``vkit render systemd`` arguments, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    gpus: list[str] = Field(min_length=1)
    tp: int | None = Field(default=None, ge=1)
    base_port: int = Field(default=REPLICA_BASE_PORT, ge=1, le=65535)
    listen: str = NGINX_LISTEN
    hf_home: PurePosixPath = PurePosixPath("/var/lib/vkit/huggingface")
    routing: Literal["round_robin", "aware"] = "round_robin"
    gateway_env: Path | None = None
    out: Path

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",")]  # checked by split_gpu_sets
        return value


def register(kinds: Any) -> None:
    """Add ``systemd`` to ``vkit render``'s kinds."""
    parser = kinds.add_parser(
        "systemd", help="per-host files of the systemd units (install.sh runs this)"
    )
    parser.add_argument("--profile", help="the replicas' deployment profile (required)")
    parser.add_argument("--gpus", help="GPU indexes (nvidia-smi's): 0,1,2,3 (required)")
    parser.add_argument(
        "--deployment",
        type=Path,
        help="a deployment file of several groups, instead of --profile, --gpus and --tp",
    )
    parser.add_argument(
        "--tp", type=int, help="GPUs per replica (tensor parallel size; default: the profile's, 1)"
    )
    parser.add_argument(
        "--base-port", type=int, default=REPLICA_BASE_PORT, help="first replica's port"
    )
    parser.add_argument("--listen", default=NGINX_LISTEN, help="NGINX's HOST:PORT")
    parser.add_argument(
        "--hf-home", default="/var/lib/vkit/huggingface", help="the replicas' HF_HOME"
    )
    parser.add_argument(
        "--routing",
        choices=["round_robin", "aware"],
        help="gateway routing: round_robin via NGINX (default), or aware (replicas direct)",
    )
    parser.add_argument(
        "--gateway-env",
        type=Path,
        help="the host's gateway.env: its timeouts.total sets the gateway's stop timeout",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory standing for /")
    parser.set_defaults(handler=run_systemd)


@dataclass(frozen=True)
class HostPlan:
    """What ``render systemd`` solved: the host's deployment and one replica's launch."""

    deployment: Deployment
    launch: LaunchSpec


def plan_host(settings: SystemdArgs) -> HostPlan:
    """Split the GPUs, solve one set's fit with ``vkit launch``'s resolver, place the ports:
    the host's :class:`~vkit.deployment.Deployment`."""
    launch = replica_settings(settings)
    gpu_sets = split_gpu_sets(settings.gpus, tensor_parallel=launch.tensor_parallel)
    spec = resolve_launch(launch, gpu_visible=True)
    tokenizer = ModelTokenizer(
        served_name=served_model(spec.options),
        source=tokenizer_source(spec.options),
        hf_cache=settings.hf_home / "hub",
    )
    try:
        deployment = host_deployment(
            launch,
            spec.plan,
            gpu_sets,
            base_port=settings.base_port,
            listen=settings.listen,
            tokenizer=tokenizer,
            routing=settings.routing,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if settings.gateway_env is not None:
        deployment = with_host_gateway_env(deployment, settings.gateway_env)
    return HostPlan(deployment, spec)


def with_host_gateway_env(deployment: Deployment, path: Path) -> Deployment:
    """The deployment with the gateway's drain as the host's ``gateway.env`` makes it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc
    try:
        gateway = host_gateway_settings(deployment.gateway, text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UsageError(f"{path}: {where}: {first['msg']}") from exc
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    drain = deployment.drain.model_copy(update={"gateway_s": gateway_drain_s(gateway)})
    return deployment.model_copy(update={"drain": drain})


def run_systemd(args: argparse.Namespace) -> int:
    if args.deployment is not None:
        return run_systemd_groups(args)
    missing = [f"--{name}" for name in ("profile", "gpus") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    settings = SystemdArgs.model_validate(
        {k: v for k, v in vars(args).items() if k in SystemdArgs.model_fields and v is not None}
    )
    host = plan_host(settings)
    for note in host.launch.notes:
        print(f"vkit render: note: {note}", file=sys.stderr)
    try:
        files = systemd_host_files(host.deployment, listen=settings.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    write_files({str(path): text for path, text in files.items()}, settings.out)
    for group in host.deployment.groups:
        for replica in replica_instances(group):
            gpus = replica.gpu_set
            label = "GPUs" if gpus.size > 1 else "GPU"
            print(f"{replica.unit}: {label} {gpus.cuda_visible_devices}, on {replica.upstream}")
    print(fit_summary(host.launch))
    return 0


def plan_groups_host(args: argparse.Namespace) -> Deployment:
    """``--deployment FILE``: every group fit on its GPUs (nothing written on an error), the
    host's :class:`~vkit.deployment.Deployment`, with the host's ``gateway.env``'s drain."""
    given = [f"--{name}" for name in ("profile", "gpus", "tp") if getattr(args, name) is not None]
    if args.routing == "round_robin":
        given.append("--routing round_robin")
    if given:
        raise UsageError(
            f"--deployment states every group and routes aware: drop {', '.join(given)}"
        )
    file = load_deployment_file(args.deployment)
    deployment = systemd_groups(
        file,
        fit_groups(file),
        base_port=args.base_port,
        hf_home=PurePosixPath(args.hf_home),
    )
    if args.gateway_env is not None:
        deployment = with_host_gateway_env(deployment, args.gateway_env)
    return deployment


def run_systemd_groups(args: argparse.Namespace) -> int:
    deployment = plan_groups_host(args)
    files = systemd_host_files(
        deployment, listen=args.listen, replica_files=group_files(deployment)
    )
    write_files({str(path): text for path, text in files.items()}, args.out)
    for group in deployment.groups:
        for replica in replica_instances(group, group_slug(group.served_model)):
            gpus = replica.gpu_set
            label = "GPUs" if gpus.size > 1 else "GPU"
            print(f"{replica.unit}: {label} {gpus.cuda_visible_devices}, on {replica.upstream}")
    for group in deployment.groups:
        launch = group.launch
        print(
            f"group {group.served_model}: {launch.model} on {launch.gpu}, tensor parallel "
            f"{launch.tensor_parallel}: --max-model-len {launch.max_model_len}"
            + (
                f" --gpu-memory-utilization {launch.gpu_memory_utilization}"
                if launch.gpu_memory_utilization is not None
                else ""
            )
        )
    return 0


def replica_settings(settings: SystemdArgs) -> LaunchSettings:
    """What each ``vllm@`` instance's ``vkit launch`` will solve: the profile, with ``--tp``."""
    fields = load_profile(settings.profile)
    if settings.tp is not None:
        fields["tensor_parallel"] = settings.tp
    return LaunchSettings(**fields)


def tokenizer_source(options: VllmOptions) -> str:
    """What vLLM loads the tokenizer from: a pass-through ``--tokenizer``, else the model."""
    for key, tokens in split_flags(options.extra_args):
        if key == "tokenizer":
            if "=" in tokens[0]:
                return tokens[0].split("=", 1)[1]
            if len(tokens) > 1:
                return tokens[1]
    return options.model


def fit_summary(spec: LaunchSpec) -> str:
    options = spec.options
    if spec.plan is None:
        return f"each replica: {options.model}, tensor parallel {options.tensor_parallel}"
    return (
        f"each replica: {options.model} on {spec.plan.target}, tensor parallel "
        f"{options.tensor_parallel}: --max-model-len {options.max_model_len} "
        f"--max-num-seqs {options.max_num_seqs}"
    )
