"""NGINX configuration for the replicas, rendered from ``nginx/vkit.conf.template``.

One template, two outputs, both pure functions of their arguments:

- :func:`render_nginx_site` -- the template's ``upstream`` + ``server`` blocks (http
  context), for an NGINX that already has a main config: the compose service
  (``/etc/nginx/conf.d/``) and the systemd host (``sites-enabled``).
- :func:`render_nginx_conf` -- the site wrapped in a complete nginx.conf that a non-root
  user runs with ``nginx -c FILE -p PREFIX`` (see :func:`nginx_argv`): pid, logs and
  every ``*_temp_path`` are relative, so they land under PREFIX.

    >>> conf = render_nginx_conf(["127.0.0.1:8001", "http://127.0.0.1:8002"], "127.0.0.1:8000")

Upstreams are ``host:port`` or ``http://host:port`` base URLs (a path or a trailing
slash is dropped: NGINX forwards the request path as it came).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TEMPLATE",
    "ProxyTuning",
    "nginx_argv",
    "parse_upstream",
    "render_nginx_conf",
    "render_nginx_site",
    "wrap_standalone",
]

# The repository's nginx/ folder, installed as the data package ``vkit.nginx``.
DEFAULT_TEMPLATE = Path(str(files("vkit.nginx"))) / "vkit.conf.template"

_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_HOST = re.compile(r"^[A-Za-z0-9._-]+$|^\[[0-9A-Fa-f:.]+\]$")
_LISTEN = re.compile(r"^[A-Za-z0-9.:\[\]_-]+$")
_SIZE = re.compile(r"^\d+[kKmMgG]?$")


@dataclass(frozen=True)
class ProxyTuning:
    """How NGINX talks to the replicas; the defaults suit vLLM streaming.

    ``ProxyTuning(read_timeout_s=900)`` keeps the rest. ``max_fails``/``fail_timeout_s``
    are NGINX's passive health check: after ``max_fails`` failed attempts a replica is
    skipped for ``fail_timeout_s`` seconds. ``next_upstream_tries`` counts the first
    attempt (2 = one retry on another replica).
    """

    read_timeout_s: int = 600
    connect_timeout_s: int = 5
    next_upstream_tries: int = 2
    next_upstream_timeout_s: int = 10
    max_fails: int = 1
    fail_timeout_s: int = 5
    keepalive: int = 32
    client_max_body_size: str = "4m"

    def __post_init__(self) -> None:
        for name in ("read_timeout_s", "connect_timeout_s", "next_upstream_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 1 <= self.next_upstream_tries <= 5:
            raise ValueError("next_upstream_tries must be 1..5 (bounded retries)")
        if self.max_fails < 1 or self.fail_timeout_s < 1 or self.keepalive < 1:
            raise ValueError("max_fails, fail_timeout_s and keepalive must be >= 1")
        if not _SIZE.match(self.client_max_body_size):
            raise ValueError(
                f"client_max_body_size: not an NGINX size: {self.client_max_body_size!r}"
            )


def parse_upstream(upstream: str) -> str:
    """``http://host:port/v1`` or ``host:port`` -> ``host:port`` (ValueError otherwise)."""
    text = upstream.strip()
    split = urlsplit(text if "://" in text else f"http://{text}")
    if split.scheme != "http":
        raise ValueError(f"upstream {upstream!r}: only http:// replicas are supported")
    try:
        port = split.port
    except ValueError as exc:
        raise ValueError(f"upstream {upstream!r}: bad port") from exc
    host = split.netloc.rsplit(":", 1)[0] if port is not None else split.netloc
    if port is None or not host or not _HOST.match(host) or split.query or split.fragment:
        raise ValueError(f"upstream {upstream!r}: expected host:port or http://host:port")
    return f"{host}:{port}"


def render_nginx_site(
    upstreams: list[str],
    listen: str,
    *,
    tuning: ProxyTuning | None = None,
    template: str | None = None,
) -> str:
    """The template's upstream and server blocks, filled in (http context)."""
    if not upstreams:
        raise ValueError("at least one upstream is needed")
    if not _LISTEN.match(listen):
        raise ValueError(f"listen {listen!r}: expected PORT, HOST:PORT or [IPv6]:PORT")
    tuning = tuning or ProxyTuning()
    servers = "\n".join(
        f"    server {parse_upstream(u)} max_fails={tuning.max_fails}"
        f" fail_timeout={tuning.fail_timeout_s}s;"
        for u in upstreams
    )
    values = {
        "upstream_servers": servers,
        "listen": listen,
        "keepalive": str(tuning.keepalive),
        "client_max_body_size": tuning.client_max_body_size,
        "connect_timeout": f"{tuning.connect_timeout_s}s",
        "read_timeout": f"{tuning.read_timeout_s}s",
        "next_upstream_tries": str(tuning.next_upstream_tries),
        "next_upstream_timeout": f"{tuning.next_upstream_timeout_s}s",
    }
    text = template if template is not None else DEFAULT_TEMPLATE.read_text()
    return _fill(text, values)


def render_nginx_conf(
    upstreams: list[str],
    listen: str,
    *,
    tuning: ProxyTuning | None = None,
    worker_processes: int = 1,
    daemon: bool = False,
    access_log: bool = False,
    template: str | None = None,
) -> str:
    """A complete nginx.conf for ``nginx -c FILE -p PREFIX``, run by any user.

    ``daemon=False`` keeps NGINX in the foreground, so the process that started it owns
    it (and can stop it with SIGTERM/SIGQUIT). Logs go to ``PREFIX/error.log`` (and
    ``PREFIX/access.log`` when ``access_log``).
    """
    site = render_nginx_site(upstreams, listen, tuning=tuning, template=template)
    return wrap_standalone(
        site, worker_processes=worker_processes, daemon=daemon, access_log=access_log
    )


def wrap_standalone(
    site: str, *, worker_processes: int = 1, daemon: bool = False, access_log: bool = False
) -> str:
    """Any http-context text (a rendered site) inside a main config for ``-p PREFIX``."""
    if worker_processes < 1:
        raise ValueError("worker_processes must be >= 1")
    lines = [
        "# Standalone nginx.conf rendered by vkit; run: nginx -c THIS_FILE -p PREFIX",
        f"worker_processes {worker_processes};",
        f"daemon {'on' if daemon else 'off'};",
        "pid nginx.pid;",
        "error_log error.log warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        "    default_type application/octet-stream;",
        f"    access_log {'access.log' if access_log else 'off'};",
        "    client_body_temp_path client_body_temp;",
        "    proxy_temp_path proxy_temp;",
        "    fastcgi_temp_path fastcgi_temp;",
        "    uwsgi_temp_path uwsgi_temp;",
        "    scgi_temp_path scgi_temp;",
        "",
        _indent(site),
        "}",
        "",
    ]
    return "\n".join(lines)


def nginx_argv(conf: Path, prefix: Path, *, binary: str = "nginx", test: bool = False) -> list[str]:
    """The command line that runs (or with ``test``, checks) a rendered nginx.conf.

    ``-e`` sends the startup error log to PREFIX too, so no root-owned path is opened.
    PREFIX must exist; the caller creates it.
    """
    argv = [binary, "-c", str(conf.resolve()), "-p", f"{prefix.resolve()}/"]
    argv += ["-e", str(prefix.resolve() / "error.log")]
    return [*argv, "-t", "-q"] if test else argv


def _fill(template: str, values: dict[str, str]) -> str:
    missing = sorted(set(_SLOT.findall(template)) - values.keys())
    if missing:
        raise ValueError(f"template slots without a value: {', '.join(missing)}")
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line.strip() else "" for line in text.splitlines())
