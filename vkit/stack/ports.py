"""Ports: is one taken, and which free ones can the stack use.

``port_in_use`` tries to *bind* the address (what the process we are about to start
would do), so it also sees a socket that listens but does not accept yet.
``pick_free_ports`` asks the kernel for ports nobody holds right now; the small race
between picking and binding is acceptable for a local stack and for tests.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` cannot be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ports_in_use(ports: Iterable[int], host: str = "127.0.0.1") -> list[int]:
    """The ports of ``ports`` that are taken, in the order given."""
    return [port for port in ports if port_in_use(port, host)]


def free_port(host: str = "127.0.0.1") -> int:
    """One port that is free at the time of the call (tests and benchmarks use this one)."""
    return pick_free_ports(1, host)[0]


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free at the time of the call."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports
