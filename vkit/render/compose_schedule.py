"""A compose bundle rendered for a replica schedule (``vkit render compose --schedule``).

``vkit schedule follow`` starts and stops the ``vllm-N`` services; the gateway must stop
sending a replica requests before it stops, since vLLM fails those that reach it while it
shuts down (docs/vllm-server.md#shutting-down). So under a schedule the gateway routes to
the replicas itself (``aware``) and reads them from a discovery file that the follower
rewrites (:data:`REPLICAS_FILE`, replaced whole by a rename): a replica leaves the file,
the gateway reads it (:data:`DRAIN_SETTLE_S`), and only then is the service stopped; a
replica started again joins the file, and the gateway's prober sends it nothing until it is
ready. The file's *directory* is bind-mounted: a mount of the file itself would keep
showing the container the old file after a rename (a bind mount pins the inode).

While no replica is ready (a floor of zero, or the first one starting again) the gateway
holds requests, up to half its whole-request timeout, which the wait counts toward.

    >>> replicas_file_text(["vllm-0", "vllm-1"])
    'http://vllm-0:8000\\nhttp://vllm-1:8000\\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S
from vkit.deployment.service_ports import replica_url

REPLICAS_DIR = "replicas"  # in the bundle, beside compose.yaml
REPLICAS_FILE = f"{REPLICAS_DIR}/replicas.txt"
REPLICAS_MOUNT = "/etc/vkit/replicas"  # where the gateway sees that directory
DISCOVERY_INTERVAL_S = 1.0  # how often the gateway reads the file
# A leaving replica is stopped after the gateway read the file without it twice, and a second.
DRAIN_SETTLE_S = 2 * DISCOVERY_INTERVAL_S + 1
HOLD_MAX_WAIT_S = GATEWAY_TOTAL_TIMEOUT_S / 2


def replicas_file_text(services: Sequence[str]) -> str:
    return "".join(f"{replica_url(name)}\n" for name in services)


def schedule_gateway_values() -> dict[str, Any]:
    """The gateway's settings under a schedule: aware routing, the replicas from the file
    (the ``upstreams`` list is only the start), and holding while none is ready."""
    return {
        "routing": "aware",
        "discovery": {
            "file": f"{REPLICAS_MOUNT}/{REPLICAS_FILE.rsplit('/', 1)[1]}",
            "interval": DISCOVERY_INTERVAL_S,
        },
        "hold": {"max_wait": HOLD_MAX_WAIT_S},
    }


def replicas_volume() -> str:
    """The gateway's bind mount of the replicas directory (read-only)."""
    return f"./{REPLICAS_DIR}:{REPLICAS_MOUNT}:ro"
