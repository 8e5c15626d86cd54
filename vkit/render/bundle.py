"""Every rendered file of a compose deployment, as text, and an atomic writer.

    >>> files = render_compose_bundle(spec, plan, price_per_hour=0.39)
    >>> sorted(files)
    ['compose.yaml', 'nginx/vkit.conf', 'prometheus/cost.rules.yml', 'prometheus/prometheus.yml']

Keys are paths relative to the compose file's directory. ``deploy/docker/`` holds the
rendered example (``vkit render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b
--quant awq``); a test re-renders it and compares. With ``spec.routing == "aware"`` there is
no NGINX and so no ``nginx/vkit.conf``. The replicas' supervisor
(``vllm_supervisor.py``) is a static file there, as ``../monitoring`` is: not rendered.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from launcher.sizing.fit import FitPlan
from vkit.deployment.service_ports import DCGM_PORT, GATEWAY_ADMIN_PORT, NGINX_PORT, VLLM_PORT
from vkit.nginx_conf import render_nginx_site
from vkit.render.alertmanager import ALERTMANAGER_PORT, render_alertmanager_files
from vkit.render.compose import ComposeSpec, build_compose, replica_service_name
from vkit.render.prometheus import build_cost_rules, build_prometheus_config

COMPOSE_FILE = "compose.yaml"
NGINX_SITE_FILE = "nginx/vkit.conf"
PROMETHEUS_FILE = "prometheus/prometheus.yml"
COST_RULES_FILE = "prometheus/cost.rules.yml"

# Docker's embedded DNS. NGINX looks the replicas' names up again once ``valid`` is past:
# a replica that is down or crash-looping at NGINX's start (no name yet) does not stop it,
# and a recreated one (a new address) is found. ``resolve`` in an upstream needs NGINX
# >= 1.27.3 (open source) and a shared-memory ``zone``.
DOCKER_DNS = "127.0.0.11"
RESOLVE_VALID_S = 5
_UPSTREAM_OPEN = re.compile(r"^(upstream \w+ \{)$", re.M)
_UPSTREAM_SERVER = re.compile(r"^(    server \S+)( .*;)$", re.M)


def header(command: str) -> str:
    return f"# Rendered by `{command}`; edit the renderer (or re-render), not this file.\n"


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096)


def render_compose_bundle(
    spec: ComposeSpec, plan: FitPlan, *, price_per_hour: float | None, command: str
) -> dict[str, str]:
    """compose.yaml, the NGINX site over the replicas, and the Prometheus files."""
    replicas = [f"{replica_service_name(s)}:{VLLM_PORT}" for s in spec.gpu_sets]
    prometheus = build_prometheus_config(
        replicas,
        f"gateway:{GATEWAY_ADMIN_PORT}",
        None if spec.cpu else f"dcgm-exporter:{DCGM_PORT}",  # CPU: no GPUs to export
        alertmanager_target=f"alertmanager:{ALERTMANAGER_PORT}",
    )
    files = {COMPOSE_FILE: header(command) + dump_yaml(build_compose(spec, plan))}
    if spec.routing == "round_robin":
        files[NGINX_SITE_FILE] = compose_nginx_site(replicas, str(NGINX_PORT))
    files[PROMETHEUS_FILE] = header(command) + dump_yaml(prometheus)
    if price_per_hour is not None:
        rules = build_cost_rules(list(spec.gpu_ids), spec.gpu, price_per_hour)
    else:  # no price known for this GPU: cost panels stay empty
        rules = {"groups": [{"name": "vkit-gpu-prices", "rules": []}]}
    files[COST_RULES_FILE] = header(command) + dump_yaml(rules)
    files.update(render_alertmanager_files(header(command)))
    return files


def compose_nginx_site(
    replicas: list[str], listen: str, *, resolver: str = DOCKER_DNS, valid_s: int = RESOLVE_VALID_S
) -> str:
    """The shared NGINX site over ``replicas``, with their names resolved at run time."""
    return resolve_at_run_time(render_nginx_site(replicas, listen), resolver, valid_s)


def resolve_at_run_time(site: str, resolver: str, valid_s: int) -> str:
    """The site's upstream block given a zone and a resolver, and ``resolve`` on each
    server (failover, passive checks and keepalive stay as rendered)."""
    opened = _UPSTREAM_OPEN.search(site)
    if opened is None or not _UPSTREAM_SERVER.search(site):
        raise ValueError("the NGINX site has no upstream block with servers to resolve")
    lines = [
        "    # Names looked up at run time through Docker's DNS (NGINX >= 1.27.3).",
        "    zone vkit_replicas 256k;",
        f"    resolver {resolver} valid={valid_s}s ipv6=off;",
        "    resolver_timeout 2s;",
    ]
    site = site[: opened.end()] + "\n" + "\n".join(lines) + site[opened.end() :]
    return _UPSTREAM_SERVER.sub(r"\1 resolve\2", site)


def write_files(files: dict[str, str], root: Path) -> list[Path]:
    """Write each file under ``root`` atomically (temp file + rename); return the paths."""
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        written.append(path)
    return written


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
