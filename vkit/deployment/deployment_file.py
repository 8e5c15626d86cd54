"""A deployment file: several replica groups (models, LoRA adapters) in one YAML file.

    gpu: l40s                      # every group's GPU kind unless it names its own (or cpu)
    groups:
      - model: llama-3.1-8b
        served_name: chat
        quant: awq
        gpus: [0, 1]               # GPU indexes (nvidia-smi's): one replica per set of tp
        context: 8192              # or concurrency: 16
        ttft_target: 1.5           # seconds to the first token: sizes vLLM's queue caps
        adapters:
          - {name: sql, source: org/llama-sql-lora, rank: 16}
        lora: {max_loras: 2, runtime_updates: true}
      - model: qwen3-4b
        served_name: fast
        gpus: [1]                  # GPU 1 is shared with chat: the memory is split
        autoscaling: {max_replicas: 4}   # Kubernetes only (KEDA; or autoscaler: hpa)

:func:`load_deployment_file` reads and checks it (a :class:`DeploymentFileError`, one line,
for anything wrong); :mod:`vkit.deployment.group_fit` solves each group's fit. Checks that
need no model shape are made here: two groups (or adapters) answering to one name,
adapters on a group whose LoRA is off, an adapter above the group's ``max_rank``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from launcher.errors import InvalidInput
from launcher.sizing.lora import LoraAdapter, LoraSettings
from launcher.sizing.memory import Quantization
from vkit.deployment.drain import REPLICA_DRAIN_S

__all__ = [
    "DeploymentFile",
    "DeploymentFileError",
    "GroupEntry",
    "LoraOptions",
    "load_deployment_file",
]

CPU = "cpu"


class DeploymentFileError(InvalidInput):
    """A deployment file that cannot be read or does not describe a deployment."""


class LoraOptions(BaseModel):
    """A group's LoRA slots (its adapters are the group's ``adapters``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rank: int | None = None
    max_loras: int = Field(default=1, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    runtime_updates: bool = False


class GroupAutoscaling(BaseModel):
    """A group's autoscaler on Kubernetes (other targets run one replica per GPU set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoscaler: Literal["keda", "hpa"] = "keda"
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    scale_target: int | None = Field(
        default=None, ge=1, description="running requests per replica (default: the planner's)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> GroupAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling: min_replicas {self.min_replicas} is above "
                f"max_replicas {self.max_replicas}"
            )
        return self


class GroupEntry(BaseModel):
    """One replica group as the file states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="a configs/models name or a model directory")
    served_name: str | None = Field(default=None, description="what clients send as model")
    gpu: str | None = Field(default=None, description="GPU kind; default: the file's")
    gpus: tuple[str, ...] = Field(default=(), description="GPU indexes; with cpu: cores")
    tp: int = Field(default=1, ge=1, le=8, description="GPUs per replica")
    replicas: int | None = Field(default=None, ge=1, description="CPU: how many (default 1)")
    quant: Quantization = "bf16"
    context: int | None = Field(default=None, ge=16, description="target max_model_len")
    concurrency: int | None = Field(default=None, ge=1, description="target concurrent requests")
    ttft_target: float | None = Field(
        default=None, gt=0, description="seconds to the first token (default 2): the queue caps"
    )
    adapters: tuple[LoraAdapter, ...] = ()
    lora: LoraOptions | bool | None = Field(
        default=None, description="None: on when adapters are named; false: off"
    )
    autoscaling: GroupAutoscaling | None = Field(
        default=None, description="Kubernetes: an autoscaler instead of a fixed replica count"
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(item).strip() for item in value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GroupEntry:
        if self.context is not None and self.concurrency is not None:
            raise ValueError("give either context or concurrency, not both")
        if self.adapters and self.lora is False:
            raise ValueError(
                f"group {self.name!r} names adapters but its LoRA is off (lora: false)"
            )
        self.lora_settings  # noqa: B018 -- an adapter above max_rank is refused here
        return self

    @property
    def name(self) -> str:
        """The served name: what clients send as ``model``."""
        return self.served_name or self.model

    @property
    def lora_settings(self) -> LoraSettings | None:
        """vLLM's LoRA settings of the group, or None when LoRA is off."""
        if self.lora is False or (self.lora is None and not self.adapters):
            return None
        options = self.lora if isinstance(self.lora, LoraOptions) else LoraOptions()
        return LoraSettings(adapters=self.adapters, **options.model_dump())


class DeploymentFile(BaseModel):
    """Every group of one deployment, and what they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str | None = Field(default=None, description="the GPU kind of groups that name none")
    shutdown_timeout: int = Field(default=REPLICA_DRAIN_S, ge=1, description="drain, seconds")
    groups: tuple[GroupEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_name_one_group(self) -> DeploymentFile:
        claimed: dict[str, str] = {}
        for group in self.groups:
            claims = [(group.name, "a group")]
            claims += [(a.name, f"an adapter of {group.name!r}") for a in group.adapters]
            for name, who in claims:
                if name in claimed:
                    raise ValueError(
                        f"the served name {name!r} is claimed twice: by {claimed[name]} and {who}"
                    )
                claimed[name] = who
        for group in self.groups:
            if self.gpu_of(group) is None:
                raise ValueError(f"group {group.name!r} has no GPU kind (gpu: at the top or in it)")
            if self.gpu_of(group) != CPU and not group.gpus:
                raise ValueError(f"group {group.name!r} lists no GPUs (gpus: [0])")
        return self

    def gpu_of(self, group: GroupEntry) -> str | None:
        """The group's GPU kind: its own, else the file's."""
        return group.gpu or self.gpu

    @property
    def served_names(self) -> list[str]:
        return [group.name for group in self.groups]


def parse_deployment(data: Any, source: str = "the deployment file") -> DeploymentFile:
    """A parsed YAML document as a :class:`DeploymentFile` (one-line errors)."""
    try:
        return DeploymentFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = first["msg"].removeprefix("Value error, ")
        raise DeploymentFileError(f"{source}: {where + ': ' if where else ''}{message}") from None


def load_deployment_file(path: Path) -> DeploymentFile:
    """Read and check a deployment file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise DeploymentFileError(f"{path}{line}: not YAML") from None
    if not isinstance(data, dict):
        raise DeploymentFileError(f"{path}: expected a mapping with groups:")
    return parse_deployment(data, str(path))
