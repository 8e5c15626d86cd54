"""``vkit up --deployment FILE``: every group of a deployment file as local processes. Pure.

    >>> plan = plan_groups_stack(settings, fits, ports, layout, model_paths=paths,
    ...                          python="python3", cpu_count=8)
    >>> [spec.name for spec in plan.specs]
    ['replica-0', 'replica-1', 'gateway']

Each group's replicas run ``vkit launch`` on loopback ports of their own (the ports are
taken in group order), with the group's served name, the fit's context and, on a GPU, the
group's GPU set and memory share; LoRA's flags and switch travel as
:func:`~vkit.deployment.launch_args.launch_args` writes them. The gateway routes ``aware``
to every replica (no NGINX over them) and learns which serves which model from their
``/v1/models`` (each replica is ready when it lists any model:
:func:`~vkit.deployment.model.expected_models`). The edge, Redis and the stop order are
:func:`~vkit.stack.stack_plan.plan_stack`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_from_values
from vkit.deployment import Deployment, DrainBudget, Ports, ReplicaGroup
from vkit.deployment.group_fit import GroupFit, group_launch
from vkit.deployment.model import expected_models
from vkit.stack.stack_plan import (
    LOOPBACK,
    StackLayout,
    StackPlan,
    StackPorts,
    edge_spec,
    gateway_process,
    gateway_url,
    redis_spec,
    replica_specs,
    stack_edge_conf,
)
from vkit.stack.up_settings import UpSettings

__all__ = ["groups_stack_deployment", "plan_groups_stack", "served_names"]


def served_names(fits: list[GroupFit]) -> list[str]:
    """Every name a client may send as ``model``: each group's, then its adapters'. Empty
    (every model) when a group loads adapters at run time: their names are not known yet."""
    if any(fit.entry.lora_settings and fit.entry.lora_settings.runtime_updates for fit in fits):
        return []
    names: list[str] = []
    for fit in fits:
        names.append(fit.name)
        names += [adapter.name for adapter in fit.entry.adapters]
    return names


def _gateway(
    fits: list[GroupFit],
    model_paths: Mapping[str, str],
    layout: StackLayout,
    ports: StackPorts,
) -> GatewaySettings:
    tokenizers: dict[str, str] = {}
    for fit in fits:
        for name in [fit.name, *(adapter.name for adapter in fit.entry.adapters)]:
            tokenizers[name] = model_paths[fit.name]
    values: dict[str, Any] = {
        "routing": "aware",
        "upstreams": [f"http://{LOOPBACK}:{port}" for port in ports.replicas],
        "keys_file": str(layout.keys_file),
        "health": {"expected_models": expected_models([fit.name for fit in fits])},
        "tokenizers": {"models": tokenizers},
    }
    if ports.redis is not None:
        values["redis_url"] = f"redis://{LOOPBACK}:{ports.redis}/0"
    if ports.gateway_admin is not None:
        values.update(admin_host=LOOPBACK, admin_port=ports.gateway_admin)
    return settings_from_values(values)


def groups_stack_deployment(
    settings: UpSettings,
    fits: list[GroupFit],
    ports: StackPorts,
    layout: StackLayout,
    *,
    model_paths: Mapping[str, str],
) -> Deployment:
    """The file's groups on this host: ``ports.replicas`` dealt out in group order."""
    needed = sum(len(fit.gpu_sets) for fit in fits)
    if needed != len(ports.replicas):
        raise ValueError(f"{len(ports.replicas)} replica ports for {needed} replicas")
    groups: list[ReplicaGroup] = []
    taken = 0
    for fit in fits:
        own = ports.replicas[taken : taken + len(fit.gpu_sets)]
        taken += len(own)
        launch = group_launch(
            fit, model_paths[fit.name], host=LOOPBACK, shutdown_timeout=settings.shutdown_timeout_s
        )
        if fit.cpu:
            groups.append(ReplicaGroup(launch=launch, replicas=len(own), ports=own))
        else:
            groups.append(ReplicaGroup(launch=launch, gpu_sets=fit.gpu_sets, ports=own))
    optional = {"redis": ports.redis, "gateway_admin": ports.gateway_admin}
    return Deployment(
        groups=tuple(groups),
        gateway=_gateway(fits, model_paths, layout, ports),
        ports=Ports(
            gateway=ports.gateway,
            nginx=ports.nginx,
            **{name: port for name, port in optional.items() if port is not None},
        ),
        drain=DrainBudget(replica_s=int(settings.shutdown_timeout_s)),
    )


def plan_groups_stack(
    settings: UpSettings,
    fits: list[GroupFit],
    ports: StackPorts,
    layout: StackLayout,
    *,
    model_paths: Mapping[str, str],
    python: str,
    cpu_count: int,
) -> StackPlan:
    """The processes of :func:`groups_stack_deployment`: replicas, Redis, the gateway (and
    the edge when it is in front)."""
    deployment = groups_stack_deployment(settings, fits, ports, layout, model_paths=model_paths)
    replicas = replica_specs(deployment, settings, layout, python, cpu_count)
    redis = [] if ports.redis is None else [redis_spec(settings, layout, ports.redis)]
    behind_edge = ports.edge is not None
    host = LOOPBACK if behind_edge else settings.host
    gateway = gateway_process(deployment.gateway, host, ports.gateway, layout, python)
    name = fits[0].name
    if ports.edge is None:
        url = gateway_url(settings.host, ports.gateway)
        return StackPlan((*replicas, *redis, gateway), "", url, name)
    edge_conf = stack_edge_conf(settings, layout, deployment.gateway, ports.gateway, ports.edge)
    url = gateway_url(settings.host, ports.edge, tls=settings.uses_tls)
    edge = edge_spec(settings, layout, ports.edge)
    return StackPlan((*replicas, *redis, edge, gateway), "", url, name, edge_conf)
