"""``UpSettings``: everything ``vkit up`` can be told, modelled once.

Sources, highest first: constructor arguments (the CLI flags), ``VKIT_UP_*``
environment variables, defaults. With no flags at all the stack runs on the CPU with
the built-in tiny model, two replicas, the gateway on ``127.0.0.1:8000`` and the run
directory ``.vkit/run`` (logs, nginx.conf, the demo keys file, the tiny model).

On any address but loopback (``--host 0.0.0.0``) the port is the edge's: NGINX with header
and body timeouts, per-client connection limits and TLS (``--tls-cert``/``--tls-key``, else a
self-signed pair made once in the run directory's ``tls/``), the gateway behind it on
loopback (docs/edge.md). ``--edge`` puts it in front on loopback too (plain HTTP unless a
certificate is given); ``--no-edge`` leaves the gateway facing clients. ``--deployment FILE``
runs a deployment file's groups instead of one model (:mod:`vkit.stack.stack_groups`), routed
``aware``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from launcher.supervision.tiny_model import TINY_MODEL_NAME

# What the CPU engine starts fast with (docs/cpu-engine.md#start-up-time).
TINY_MAX_MODEL_LEN = 256


class DemoKeyLimits(BaseModel):
    """Limits of the fresh demo key that ``vkit up`` prints."""

    model_config = ConfigDict(extra="forbid")

    rpm: int = Field(default=60, ge=1)
    tpm: int = Field(default=20_000, ge=1)
    concurrency: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=128, ge=1)


class UpSettings(BaseSettings):
    """The whole local stack: N replicas, NGINX, optional Redis, the gateway."""

    model_config = SettingsConfigDict(
        env_prefix="VKIT_UP_", env_nested_delimiter="__", extra="forbid"
    )

    replicas: int = Field(default=2, ge=1, le=16)
    model: str | None = Field(
        default=None, description="model name or directory; None = tiny model"
    )
    gpu: str | None = Field(default=None, description="GPU name from configs/gpus.yaml; None = CPU")
    served_model_name: str | None = None
    max_model_len: int | None = Field(default=None, ge=16)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    redis: bool = False
    routing: Literal["round_robin", "aware"] = Field(
        default="round_robin",
        description="round_robin: the gateway in front of NGINX; aware: the gateway routes "
        "to the replicas itself by load and prompt prefix (no NGINX)",
    )
    run_dir: Path = Path(".vkit/run")
    nginx_port: int | None = Field(default=None, ge=1, le=65535, description="None = a free port")
    redis_port: int | None = Field(default=None, ge=1, le=65535, description="None = a free port")
    replica_ports: list[int] | None = Field(default=None, description="None = free ports")
    nginx_bin: str = "nginx"
    redis_bin: str = "redis-server"
    cpu_kvcache_gib: float = Field(
        default=1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE per replica"
    )
    startup_timeout_s: float = Field(default=600.0, gt=0)
    shutdown_timeout_s: float = Field(
        default=10.0, ge=0, description="drain time for in-flight requests"
    )
    demo_key: DemoKeyLimits = DemoKeyLimits()
    edge: bool | None = Field(
        default=None,
        description="NGINX in front of the gateway (timeouts, per-client limits, TLS); "
        "None = when --host is not loopback",
    )
    tls_cert: Path | None = Field(default=None, description="the edge's certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="its private key (PEM)")
    deployment: Path | None = Field(
        default=None, description="a deployment file of several groups (docs/deployment-file.md)"
    )
    schedule: Path | None = Field(
        default=None, description="a replica schedule to follow (docs/replica-schedule.md)"
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> UpSettings:
        if self.deployment is not None:
            stated = ("model", "gpu", "served_model_name", "max_model_len", "replicas")
            given = [f"--{f.replace('_', '-')}" for f in stated if f in self.model_fields_set]
            if given:
                raise ValueError(f"--deployment states every group: drop {', '.join(given)}")
            if self.replica_ports is not None or self.routing != "aware":
                raise ValueError("--deployment routes aware over free replica ports")
            if self.schedule is not None:
                raise ValueError("--schedule follows one model's replicas: not with --deployment")
        if self.schedule is not None and self.routing != "aware":
            raise ValueError(
                "--schedule routes aware: the gateway drops a replica before it is stopped"
            )
        if self.gpu is not None and self.model is None:
            raise ValueError("--gpu needs --model (the tiny model is for CPU demos)")
        if self.replica_ports is not None and len(self.replica_ports) != self.replicas:
            raise ValueError(
                f"replica_ports has {len(self.replica_ports)} ports for {self.replicas} replicas"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert is not None and self.edge is False:
            raise ValueError("--tls-cert needs the edge (TLS is served by it)")
        return self

    @property
    def loopback_only(self) -> bool:
        """The gateway's address reaches no other host."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")

    @property
    def uses_edge(self) -> bool:
        """NGINX in front: asked for, or by default wherever other hosts reach the port."""
        return self.edge if self.edge is not None else not self.loopback_only

    @property
    def uses_tls(self) -> bool:
        """The edge serves TLS: with the given pair, or off loopback a self-signed one."""
        return self.uses_edge and (self.tls_cert is not None or not self.loopback_only)

    @property
    def uses_tiny_model(self) -> bool:
        return self.model is None

    @property
    def model_name(self) -> str:
        """The name clients send as ``model``."""
        if self.served_model_name:
            return self.served_model_name
        return TINY_MODEL_NAME if self.model is None else self.model
