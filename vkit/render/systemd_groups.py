"""A systemd host of a deployment file: every group's replicas as ``vllm@GROUP-SET``
instances behind one gateway.

    vkit render systemd --deployment models.yaml --out STAGE

Each group's replicas run ``vkit launch`` on the group's own profile,
``/etc/vkit/replica-GROUP.yaml`` (:func:`group_profile`: its served name, the fit's context,
GPU kind, quantization, memory share and LoRA settings), named in each instance's
``replica-GROUP-SET.env`` as ``VKIT_REPLICA_PROFILE`` beside its port, GPUs and
tensor-parallel size, and vLLM's runtime adapter switch where the group asks for it
(:func:`~vkit.deployment.launch_args.launch_env`). The ports are dealt out in group order from
the base port. The gateway routes ``aware`` to every replica's loopback port
(:func:`~vkit.render.groups_gateway.groups_gateway_values`); its listeners, keys and Redis are
a single-model host's (:func:`~vkit.render.systemd.gateway_host_values`).

CUDA only: a CPU group is refused (the unit loads the NVIDIA driver's devices).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml

from gateway.settings_env import settings_from_values
from launcher.errors import InvalidInput
from launcher.supervision.launch_spec import LaunchSettings, loaded_checkpoint
from vkit.deployment import Deployment, DrainBudget, Ports, ReplicaGroup
from vkit.deployment.deployment_file import DeploymentFile
from vkit.deployment.group_fit import GroupFit, group_launch
from vkit.deployment.launch_args import launch_env
from vkit.render.compose import group_slug
from vkit.render.groups_gateway import groups_gateway_values
from vkit.render.systemd import (
    ETC_VKIT,
    REPLICA_HOST,
    gateway_drain_s,
    gateway_host_values,
    replica_env,
    replica_instances,
    replica_ports,
)

__all__ = ["PROFILE_VAR", "group_files", "group_profile", "profile_path", "systemd_groups"]

# The instance's profile, in its env file (the unit's default: /etc/vkit/replica.yaml).
PROFILE_VAR = "VKIT_REPLICA_PROFILE"
# What the unit gives on vkit launch's command line, not the profile.
UNIT_FLAGS = frozenset({"host", "port"})


def profile_path(group: ReplicaGroup) -> PurePosixPath:
    """``etc/vkit/replica-GROUP.yaml``, below ``/``."""
    return ETC_VKIT / f"replica-{group_slug(group.served_model)}.yaml"


def group_profile(launch: LaunchSettings) -> str:
    """The group's ``vkit launch`` profile: every setting it was given but host and port."""
    fields = launch.model_dump(
        mode="json", include=launch.model_fields_set - UNIT_FLAGS, exclude_none=True
    )
    return (
        f"# Replica profile of group {launch.served_model_name}: written by install.sh from the\n"
        "# deployment file on every install (vkit render systemd --deployment).\n"
    ) + yaml.safe_dump(fields, sort_keys=False)


def group_files(deployment: Deployment) -> dict[PurePosixPath, str]:
    """Each group's profile and each of its replicas' env files, by path below ``/``."""
    files: dict[PurePosixPath, str] = {}
    for group in deployment.groups:
        profile = profile_path(group)
        files[profile] = group_profile(group.launch)
        extra = {PROFILE_VAR: str(PurePosixPath("/") / profile), **launch_env(group.launch)}
        for replica in replica_instances(group, group_slug(group.served_model)):
            files[replica.env_path] = replica_env(replica, extra)
    return files


def _tokenizer(group: ReplicaGroup) -> str:
    """What vLLM loads the group's tokenizer from: the catalog's checkpoint (or directory)."""
    return loaded_checkpoint(group.launch.model, group.launch.quant)[0]


def systemd_groups(
    file: DeploymentFile, fits: list[GroupFit], *, base_port: int, hf_home: PurePosixPath
) -> Deployment:
    """The file's groups on this host, each replica on its loopback port (from
    ``base_port``, in group order), the gateway routing to all of them."""
    cpu = [fit.name for fit in fits if fit.cpu]
    if cpu:
        raise InvalidInput(f"systemd runs GPU replicas: group {cpu[0]!r} is on cpu")
    slugs: dict[str, str] = {}
    for fit in fits:
        other = slugs.setdefault(group_slug(fit.name), fit.name)
        if other != fit.name:
            raise InvalidInput(
                f"groups {other!r} and {fit.name!r} both make instances vllm@{group_slug(other)}-*"
            )
    count = sum(len(fit.gpu_sets) for fit in fits)
    try:
        ports = replica_ports(base_port, count)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    groups: list[ReplicaGroup] = []
    for fit in fits:
        launch = group_launch(
            fit, fit.entry.model, host=REPLICA_HOST, shutdown_timeout=file.shutdown_timeout
        )
        own, ports = ports[: len(fit.gpu_sets)], ports[len(fit.gpu_sets) :]
        groups.append(ReplicaGroup(launch=launch, plan=fit.plan, gpu_sets=fit.gpu_sets, ports=own))
    upstreams = [
        f"http://{replica.upstream}" for group in groups for replica in replica_instances(group)
    ]
    host = Ports()
    values: dict[str, Any] = {
        **gateway_host_values(host),
        **groups_gateway_values(groups, upstreams, _tokenizer),
    }
    values["tokenizers"]["hf_cache"] = str(hf_home / "hub")
    gateway = settings_from_values(values)
    return Deployment(
        groups=tuple(groups),
        gateway=gateway,
        ports=host,
        drain=DrainBudget(replica_s=file.shutdown_timeout, gateway_s=gateway_drain_s(gateway)),
    )
