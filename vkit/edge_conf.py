"""The public edge: NGINX in front of the gateway (template: :mod:`vkit.edge_template`).

The gateway's server (uvicorn) has no timeout for a request head that never ends and reads
bodies chunk by chunk in Python; where clients reach the gateway, NGINX goes in front
(docs/edge.md). Pure functions of their arguments:

- :func:`render_edge_site` -- the site (http context): a ``limit_conn_zone``, the gateway
  as the one upstream and the public ``server``; for an NGINX with a main config (compose's
  ``edge`` service, the systemd host's ``sites-enabled``).
- :func:`render_edge_conf` -- the same site in a standalone nginx.conf (``vkit up``, tests),
  run with :func:`vkit.nginx_conf.nginx_argv`.

    >>> limits = EdgeLimits.for_gateway(GatewaySettings())
    >>> site = render_edge_site("127.0.0.1:8080", "0.0.0.0:443", limits,
    ...                         tls=EdgeTls(Path("/etc/vkit/tls/cert.pem"),
    ...                                     Path("/etc/vkit/tls/key.pem")))

Without ``tls`` the edge speaks plain HTTP (a local run, or TLS ended by something else).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePath

from gateway.settings import GatewaySettings
from vkit.edge_template import EDGE_TEMPLATE
from vkit.nginx_conf import _fill, parse_upstream, wrap_standalone

__all__ = [
    "EDGE_TEMPLATE",
    "EdgeLimits",
    "EdgeTls",
    "render_edge_conf",
    "render_edge_site",
    "systemd_edge_site",
]

# Where a systemd host keeps the edge's pair (install.sh makes a self-signed one if absent).
HOST_TLS_DIR = PurePath("/etc/vkit/tls")

_LISTEN = re.compile(r"^[A-Za-z0-9.:\[\]_-]+$")
_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")


@dataclass(frozen=True)
class EdgeLimits:
    """What the edge allows one client; the defaults and their reasons are in docs/edge.md.

    ``EdgeLimits.for_gateway(settings)`` takes the body limit and the longest request from
    the gateway's own settings, so the edge never refuses what the gateway accepts nor
    gives up on an answer the gateway is still allowed to send. ``requests_per_s`` (with
    ``burst``) turns on ``limit_req`` per client address; ``None`` leaves rates to the
    gateway's per-key limits.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    read_timeout_s: int = 600
    header_timeout_s: int = 10
    body_timeout_s: int = 10
    send_timeout_s: int = 60
    keepalive_timeout_s: int = 30
    conns_per_client: int = 64
    requests_per_s: int | None = None
    burst: int = 20

    def __post_init__(self) -> None:
        numbers = {
            "max_body_bytes": self.max_body_bytes,
            "read_timeout_s": self.read_timeout_s,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "send_timeout_s": self.send_timeout_s,
            "keepalive_timeout_s": self.keepalive_timeout_s,
            "conns_per_client": self.conns_per_client,
            "burst": self.burst,
        }
        for name, value in numbers.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.requests_per_s is not None and self.requests_per_s < 1:
            raise ValueError("requests_per_s must be >= 1 (or None: no limit_req)")

    @classmethod
    def for_gateway(cls, gateway: GatewaySettings, **overrides: int | None) -> EdgeLimits:
        """The gateway's body limit and total timeout, the rest defaults (or ``overrides``)."""
        values: dict[str, int | None] = {
            "max_body_bytes": gateway.max_body_bytes,
            "read_timeout_s": math.ceil(gateway.timeouts.total),
        }
        return cls(**{**values, **overrides})  # type: ignore[arg-type]

    @property
    def client_max_body_size(self) -> str:
        """NGINX's size: whole KiB, rounded down so nothing over the gateway's limit passes."""
        return f"{max(1, self.max_body_bytes // 1024)}k"


@dataclass(frozen=True)
class EdgeTls:
    """The certificate (chain first) and its private key, PEM, as NGINX will read them."""

    certificate: PurePath
    key: PurePath

    def __post_init__(self) -> None:
        for path in (self.certificate, self.key):
            if not _PATH.match(str(path)):
                raise ValueError(f"TLS file {str(path)!r}: use a path without spaces or quotes")


def render_edge_site(
    gateway: str,
    listen: str,
    limits: EdgeLimits | None = None,
    *,
    tls: EdgeTls | None = None,
    health_listen: str | None = None,
    template: str | None = None,
) -> str:
    """The edge's site: ``listen`` (with ``tls``: TLS on it) in front of ``gateway``
    (``host:port``); ``health_listen`` adds a plain-HTTP ``/edge_health`` there (for a
    container's healthcheck)."""
    limits = limits or EdgeLimits()
    for address in (listen, health_listen or "0"):
        if not _LISTEN.match(address):
            raise ValueError(f"listen {address!r}: expected PORT, HOST:PORT or [IPv6]:PORT")
    values = {
        "gateway": parse_upstream(gateway),
        "listen": f"    listen {listen}{' ssl' if tls else ''};",
        "tls": _tls_lines(tls),
        "header_timeout": f"{limits.header_timeout_s}s",
        "body_timeout": f"{limits.body_timeout_s}s",
        "send_timeout": f"{limits.send_timeout_s}s",
        "keepalive_timeout": f"{limits.keepalive_timeout_s}s",
        "client_max_body_size": limits.client_max_body_size,
        "conns_per_client": str(limits.conns_per_client),
        "read_timeout": f"{limits.read_timeout_s}s",
        "limit_req_zone": _limit_req_zone(limits),
        "limit_req": _limit_req(limits),
        "health_server": _health_server(health_listen),
    }
    text = template if template is not None else EDGE_TEMPLATE
    return _fill(text, values)


def render_edge_conf(
    gateway: str,
    listen: str,
    limits: EdgeLimits | None = None,
    *,
    tls: EdgeTls | None = None,
    worker_processes: int = 1,
) -> str:
    """The edge site in a standalone nginx.conf (``nginx -c FILE -p PREFIX``, any user)."""
    site = render_edge_site(gateway, listen, limits, tls=tls)
    return wrap_standalone(site, worker_processes=worker_processes)


def systemd_edge_site(gateway: GatewaySettings, *, listen: str = "443") -> str:
    """The systemd host's edge site (``deploy/systemd/nginx/vkit-edge.conf``): TLS on
    ``listen`` with :data:`HOST_TLS_DIR`'s pair, in front of the gateway's own listener."""
    tls = EdgeTls(HOST_TLS_DIR / "cert.pem", HOST_TLS_DIR / "key.pem")
    address = f"{gateway.host}:{gateway.port}"
    return render_edge_site(address, listen, EdgeLimits.for_gateway(gateway), tls=tls)


def _tls_lines(tls: EdgeTls | None) -> str:
    if tls is None:
        return "    # Plain HTTP: no TLS certificate was given.\n"
    return (
        f"    ssl_certificate {tls.certificate};\n"
        f"    ssl_certificate_key {tls.key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_session_cache shared:vkit_edge_tls:10m;\n"
        "    ssl_session_timeout 1h;\n"
    )


def _limit_req_zone(limits: EdgeLimits) -> str:
    if limits.requests_per_s is None:
        return ""
    rate = f"{limits.requests_per_s}r/s"
    return f"limit_req_zone $binary_remote_addr zone=vkit_edge_req:10m rate={rate};\n"


def _limit_req(limits: EdgeLimits) -> str:
    if limits.requests_per_s is None:
        return ""
    return (
        f"    limit_req zone=vkit_edge_req burst={limits.burst} nodelay;\n"
        "    limit_req_status 429;\n"
    )


def _health_server(listen: str | None) -> str:
    if listen is None:
        return ""
    return (
        "\n# The edge's own liveness, plain HTTP for the container's healthcheck.\n"
        "server {\n"
        f"    listen {listen};\n"
        "    location = /edge_health {\n"
        "        access_log off;\n"
        "        default_type text/plain;\n"
        '        return 200 "ok\\n";\n'
        "    }\n"
        "}\n"
    )
