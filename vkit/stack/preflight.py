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
    # NGINX over the replicas (round robin) and as the edge; aware without the edge: none
    wants_nginx = settings.routing == "round_robin" or settings.uses_edge
    needed = [settings.nginx_bin] if wants_nginx else []
    needed += ["openssl"] if settings.uses_tls and settings.tls_cert is None else []
    needed += [settings.redis_bin] if settings.redis else []
    return [binary for binary in needed if which(binary) is None]


def check_binaries(settings: UpSettings, which: Which = shutil.which) -> None:
    missing = missing_binaries(settings, which)
    if missing:
        hint = "install it (Debian/Ubuntu: apt-get install nginx redis-server openssl)"
        raise CliError(f"{', '.join(missing)} not found on PATH: {hint}, or pass its path")


def check_ports(named_ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Fail with the first port that is taken, naming what needed it."""
    for role, port in named_ports.items():
        if port_in_use(port, host):
            raise CliError(
                f"port {port} ({role}) is already in use on {host}: "
                "stop what holds it or choose another port"
            )
