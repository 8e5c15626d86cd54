"""How long each part drains when stopped, and what the stopper waits beyond that.

A replica drains for vLLM's ``--shutdown-timeout``; the gateway for its longest request
(``timeouts.total``, which is also uvicorn's graceful shutdown there). Whatever stops them
(compose's ``stop_grace_period``, the kubelet's ``terminationGracePeriodSeconds``, systemd's
``TimeoutStopSec``) waits the drain plus :data:`DRAIN_MARGIN_S` before SIGKILL.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DRAIN_MARGIN_S = 15
# The gateway's longest request in the deploy files (its timeouts.total); NGINX's read
# timeout (ProxyTuning) is the same.
GATEWAY_TOTAL_TIMEOUT_S = 600
REPLICA_DRAIN_S = 30  # vLLM's --shutdown-timeout unless the render says otherwise


class DrainBudget(BaseModel):
    """The drains of one deployment, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replica_s: int = Field(default=REPLICA_DRAIN_S, ge=0)
    gateway_s: int = Field(default=GATEWAY_TOTAL_TIMEOUT_S, ge=0)
    margin_s: int = Field(default=DRAIN_MARGIN_S, ge=0)

    def grace_s(self, drain_s: int) -> int:
        """What the stopper waits after the stop signal before SIGKILL."""
        return drain_s + self.margin_s
