"""One deployment, target-neutral: :class:`Deployment` of :class:`ReplicaGroup`.

    >>> group = ReplicaGroup(launch=LaunchSettings(model="llama-3.1-8b", quant="awq"),
    ...                      plan=plan, gpu_sets=(GpuSet(("0",)), GpuSet(("1",))))
    >>> Deployment(groups=(group,), gateway=settings_from_values({"routing": "aware"}))

A group is one served model: its vLLM settings (what ``vkit launch`` takes), the fit
solver's plan for one replica, the GPU sets its replicas own and how many replicas it runs.
Replicas that share a host (systemd, ``vkit up``) each have a port of their own
(:attr:`ReplicaGroup.ports`); each runs :meth:`ReplicaGroup.replica_launch`, which those
targets pass to ``vkit launch`` as flags (:func:`vkit.deployment.launch_args.launch_args`).
The gateway's settings are a real :class:`~gateway.settings.GatewaySettings` value, written
out by :func:`gateway.settings_env.settings_env` alone. Compose, systemd, Kubernetes and
``vkit up`` translate a deployment into their own files; none spells a value of it again.
Several groups (a deployment file, :mod:`vkit.deployment.deployment_file`) need ``aware``
routing: the gateway sends each request to the group serving its ``model``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.settings import GatewaySettings
from launcher.sizing.fit import FitPlan
from launcher.sizing.gpu_sets import GpuSet
from launcher.sizing.lora import LoraSettings
from launcher.sizing.memory import Quantization
from launcher.supervision.launch_spec import LaunchSettings, plan_vllm_argv
from vkit.deployment.drain import DrainBudget
from vkit.deployment.images import Images
from vkit.deployment.service_ports import VLLM_PORT, Ports

Routing = Literal["round_robin", "aware"]


class ReplicaGroup(BaseModel):
    """The replicas of one served model."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    launch: LaunchSettings = Field(description="vLLM's settings, as vkit launch takes them")
    plan: FitPlan | None = Field(default=None, description="the fit solver's plan per replica")
    gpu_sets: tuple[GpuSet, ...] = Field(default=(), description="one per replica (GPUs)")
    replicas: int | None = Field(default=None, ge=0, description="None: one per GPU set")
    load: str | None = Field(
        default=None, description="what vLLM loads instead of the checkpoint (a ${VAR} reference)"
    )
    ports: tuple[int, ...] = Field(
        default=(),
        description="each replica's port where they share a host (systemd, vkit up); "
        "empty: each listens on launch.port in its own container or pod",
    )

    @model_validator(mode="after")
    def _one_port_per_replica(self) -> ReplicaGroup:
        if self.ports and len(self.ports) != self.replica_count:
            raise ValueError(f"{len(self.ports)} ports for {self.replica_count} replicas")
        return self

    @property
    def served_model(self) -> str:
        """The name clients send as ``model``."""
        return self.launch.served_model_name or self.launch.model

    @property
    def replica_count(self) -> int:
        return len(self.gpu_sets) if self.replicas is None else self.replicas

    def replica_launch(self, index: int) -> LaunchSettings:
        """What replica ``index`` runs: the group's settings on that replica's port."""
        if not self.ports:
            return self.launch
        return self.launch.model_copy(update={"port": self.ports[index]})

    def vllm_argv(self, engine: Sequence[str] | None = None) -> list[str]:
        """The vLLM command of each replica (the launcher's one builder)."""
        return plan_vllm_argv(self.launch, self.plan, load=self.load, engine=engine)


class Deployment(BaseModel):
    """Replica groups, the gateway in front of them, and where and how everything runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    groups: tuple[ReplicaGroup, ...] = Field(min_length=1)
    gateway: GatewaySettings
    ports: Ports = Ports()
    images: Images = Images()
    drain: DrainBudget = DrainBudget()

    @model_validator(mode="after")
    def _one_group_per_model(self) -> Deployment:
        names = [group.served_model for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"two replica groups serve the same model: {names}")
        ports = [port for group in self.groups for port in group.ports]
        if len(set(ports)) != len(ports):
            raise ValueError(f"two replicas on one port: {ports}")
        if len(self.groups) > 1 and self.gateway.routing != "aware":
            raise ValueError("several replica groups need routing aware (routed by model)")
        return self

    @property
    def routing(self) -> Routing:
        """Through NGINX (``round_robin``), or the gateway to the replicas (``aware``)."""
        return self.gateway.routing

    @property
    def group(self) -> ReplicaGroup:
        """The first group (the only one of a single-model deployment)."""
        return self.groups[0]


def expected_models(served: list[str]) -> list[str]:
    """The gateway's ``health.expected_models``: the one model, or with several groups none
    (every replica must list each expected model, and each replica serves its group's only;
    which serves which is the router's to learn from ``/v1/models``)."""
    return served if len(served) == 1 else []


def container_group(
    *,
    model: str,
    served_model: str,
    plan: FitPlan,
    quant: Quantization,
    shutdown_timeout_s: int,
    enforce_eager: bool = False,
    gpu_sets: tuple[GpuSet, ...] = (),
    replicas: int | None = None,
    load: str | None = None,
    lora: LoraSettings | None = None,
) -> ReplicaGroup:
    """A group whose replicas run in containers or pods: each listens on every interface at
    :data:`~vkit.deployment.service_ports.VLLM_PORT`."""
    launch = LaunchSettings(
        model=model,
        served_model_name=served_model,
        host="0.0.0.0",
        port=VLLM_PORT,
        quant=quant,
        enforce_eager=enforce_eager,
        shutdown_timeout=shutdown_timeout_s,
        lora=lora,
    )
    return ReplicaGroup(launch=launch, plan=plan, gpu_sets=gpu_sets, replicas=replicas, load=load)
