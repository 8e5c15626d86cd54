"""Plain data describing processes to start: what to run, and when it is ready.

A ``ProcessSpec`` is all a supervisor needs: argv, extra environment, a log file,
the readiness checks that must all pass, the signal that asks it to stop and the
tier it stops in (tier 0 first: the front door closes before its backends).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HttpCheck:
    """Ready when ``GET url`` answers 200."""

    url: str


@dataclass(frozen=True)
class VllmCheck:
    """Ready when the vLLM replica at ``base_url`` serves ``model`` (the launcher's rule)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TcpCheck:
    """Ready when ``host:port`` accepts a TCP connection."""

    host: str
    port: int


ReadyCheck = HttpCheck | TcpCheck | VllmCheck


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: tuple[ReadyCheck, ...] = ()
    stop_signal: int = signal.SIGTERM
    stop_tier: int = 0
