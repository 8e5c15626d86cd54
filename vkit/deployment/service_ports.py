"""The ports of a deployment's parts, the same in every target that has them.

On one host (systemd) the replicas take consecutive loopback ports from
:data:`REPLICA_BASE_PORT`; in containers and pods each replica has its own address and
listens on :data:`VLLM_PORT`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

VLLM_PORT = 8000
NGINX_PORT = 8000
REPLICA_BASE_PORT = 8001
GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9180  # /metrics and details: never published
REDIS_PORT = 6379
DCGM_PORT = 9400


class Ports(BaseModel):
    """Where each part listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm: int = Field(default=VLLM_PORT, ge=1, le=65535)
    nginx: int = Field(default=NGINX_PORT, ge=1, le=65535)
    gateway: int = Field(default=GATEWAY_PORT, ge=1, le=65535)
    gateway_admin: int = Field(default=GATEWAY_ADMIN_PORT, ge=1, le=65535)
    redis: int = Field(default=REDIS_PORT, ge=1, le=65535)


def replica_url(service: str) -> str:
    """The base URL of a replica service on a compose network (its service name as host)."""
    return f"http://{service}:{VLLM_PORT}"
