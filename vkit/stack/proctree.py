"""Process trees from ``/proc`` (Linux; elsewhere the tree is empty).

Process groups are not enough to find everything a child started: ``vkit launch``
puts vLLM in a session of its own. The supervisor snapshots each child's tree
before stopping it and kills what is left of it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name: state, ppid, ..."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def descendants(root: int) -> set[int]:
    """Every process below ``root``, at the time of the call."""
    parents: dict[int, int] = {}
    for entry in PROC.glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def is_alive(pid: int) -> bool:
    """Running or sleeping: not gone and not a zombie."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    return fields[0] != "Z"


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
