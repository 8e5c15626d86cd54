"""A compose healthcheck that GETs a URL inside the container with ``wget``."""

from __future__ import annotations

from typing import Any


def wget_healthcheck(url: str, interval: str = "15s") -> dict[str, Any]:
    """Healthy while ``url`` answers 2xx; 3 failures in a row of 5 s each make it unhealthy."""
    return {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", url],
        "interval": interval,
        "timeout": "5s",
        "retries": 3,
    }
