"""Checks that run before anything starts, so that failures are one clear line."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from vkit.exit_codes import CliError
from vkit.stack.ports import port_in_use
from vkit.stack.up_settings import UpSettings

Which = Callable[[str], str | None]


def missing_binaries(settings: UpSettings, which: Which = shutil.which) -> list[str]:
    """The external programs the stack needs that are not on PATH."""
    needed = [settings.nginx_bin] if settings.routing == "round_robin" else []  # aware: none
    needed += [settings.redis_bin] if settings.redis else []
    return [binary for binary in needed if which(binary) is None]


def check_binaries(settings: UpSettings, which: Which = shutil.which) -> None:
    missing = missing_binaries(settings, which)
    if missing:
        hint = "install it (Debian/Ubuntu: apt-get install nginx redis-server)"
        raise CliError(f"{', '.join(missing)} not found on PATH: {hint}, or pass its path")


def check_ports(named_ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Fail with the first port that is taken, naming what needed it."""
    for role, port in named_ports.items():
        if port_in_use(port, host):
            raise CliError(
                f"port {port} ({role}) is already in use on {host}: "
                "stop what holds it or choose another port"
            )
