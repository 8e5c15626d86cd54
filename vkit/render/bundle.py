"""Every file of a compose deployment, as text, and the writers that put them on disk.

    >>> files = render_compose_bundle(spec, plan, price_per_hour=0.39, command=...)
    >>> sorted(f for f in files if not f.startswith("build/"))
    ['.env.example', '.gitignore', 'alertmanager/alertmanager.yml', 'alertmanager/start.sh',
     'compose.yaml', 'grafana/dashboards/vkit.json', ..., 'nginx/edge.conf', 'nginx/vkit.conf',
     'prometheus/cost.rules.yml', 'prometheus/prometheus.yml', 'prometheus/rules/vkit.rules.yml',
     'vllm_supervisor.py']

Keys are paths relative to the compose file's directory, and the bundle is self-contained:
every bind-mount source and the gateway's build context (``build/gateway/``,
:mod:`vkit.render.gateway_build`) are inside it, so it runs wherever it is rendered, from a
checkout or the installed wheel. Rendered: the compose file, the NGINX site, the Prometheus
and Alertmanager files, ``.env.example`` (:mod:`vkit.render.compose_env`). Copied from the
installed kit: the replicas' supervisor (``vkit/render/vllm_supervisor.py``), the alert rules
and the Grafana provisioning and dashboard (``vkit.monitoring``, from ``deploy/monitoring/``).

``deploy/docker/`` holds the rendered example (``vkit render compose --gpu rtx4090 --gpus
0,1 --model llama-3.1-8b --quant awq --concurrency 16``); a test re-renders it and compares
(all but the kit's copied sources, ``build/gateway/src/``, which its ``.gitignore`` leaves
out). With ``spec.routing == "aware"`` there is no NGINX and so no ``nginx/vkit.conf``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from importlib.resources import files as package_files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from launcher.sizing.checkpoints import checkpoint_for
from launcher.sizing.fit import FitPlan
from vkit.deployment.service_ports import (
    DCGM_PORT,
    GATEWAY_ADMIN_PORT,
    GATEWAY_PORT,
    NGINX_PORT,
    VLLM_PORT,
)
from vkit.edge_conf import EdgeLimits, EdgeTls, render_edge_site
from vkit.nginx_conf import render_nginx_site
from vkit.render.alertmanager import ALERTMANAGER_PORT, render_alertmanager_files
from vkit.render.compose import (
    GATEWAY_BUILD_CONTEXT,
    SUPERVISOR_FILE,
    ComposeSpec,
    build_compose,
    compose_deployment,
    replica_service_name,
)
from vkit.render.compose_env import bundle_variables, render_env_example
from vkit.render.compose_schedule import REPLICAS_FILE, replicas_file_text
from vkit.render.compose_services import (
    EDGE_HEALTH_LISTEN,
    EDGE_PORT,
    EDGE_SITE_FILE,
    EDGE_TLS_MOUNT,
    GRAFANA_DASHBOARDS_DIR,
    GRAFANA_PROVISIONING_DIR,
    RULES_DIR,
)
from vkit.render.gateway_build import SOURCES, gateway_build_files
from vkit.render.prometheus import build_cost_rules, build_prometheus_config

COMPOSE_FILE = "compose.yaml"
NGINX_SITE_FILE = "nginx/vkit.conf"
PROMETHEUS_FILE = "prometheus/prometheus.yml"
COST_RULES_FILE = "prometheus/cost.rules.yml"
ENV_EXAMPLE_FILE = ".env.example"
ENV_FILE = ".env"
GITIGNORE_FILE = ".gitignore"
# The kit's packages, copied into the build context: rendered, never committed.
COPIED_SOURCES = f"{GATEWAY_BUILD_CONTEXT}/{SOURCES}/"
GITIGNORE = f"""\
# Secrets, keys, the edge's TLS pair, and the kit's sources copied for the gateway's image:
# never commit them.
{ENV_FILE}
keys/
tls/
{COPIED_SOURCES}
"""

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
    """compose.yaml, the NGINX site over the replicas, the Prometheus and Alertmanager
    files, ``.env.example``, and what the compose file mounts or builds from the kit."""
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
    limits = EdgeLimits.for_gateway(compose_deployment(spec, plan).gateway)
    files[EDGE_SITE_FILE] = compose_edge_site(limits)
    files[PROMETHEUS_FILE] = header(command) + dump_yaml(prometheus)
    if price_per_hour is not None:
        rules = build_cost_rules(list(spec.gpu_ids), spec.gpu, price_per_hour)
    else:  # no price known for this GPU: cost panels stay empty
        rules = {"groups": [{"name": "vkit-gpu-prices", "rules": []}]}
    files[COST_RULES_FILE] = header(command) + dump_yaml(rules)
    files.update(render_alertmanager_files(header(command)))
    checkpoint = checkpoint_for(spec.model, plan.quant)
    variables = bundle_variables(checkpoint.repo if checkpoint else None)
    files[ENV_EXAMPLE_FILE] = render_env_example(variables)
    files[GITIGNORE_FILE] = GITIGNORE
    if spec.schedule:  # every replica listed; `vkit schedule follow` rewrites it
        files[REPLICAS_FILE] = replicas_file_text([replica_service_name(s) for s in spec.gpu_sets])
    files.update(copied_files())
    files.update(gateway_build_files(GATEWAY_BUILD_CONTEXT))
    return files


def copied_files() -> dict[str, str]:
    """The kit's static files the compose file mounts: the replicas' supervisor, the alert
    rules, the Grafana provisioning and dashboards (``vkit.monitoring``)."""
    supervisor = package_files("vkit.render").joinpath(SUPERVISOR_FILE)
    copied = {SUPERVISOR_FILE: supervisor.read_text(encoding="utf-8")}
    monitoring = package_files("vkit.monitoring")
    for source, target in (
        ("rules", RULES_DIR),
        ("grafana/provisioning", GRAFANA_PROVISIONING_DIR),
        ("grafana/dashboards", GRAFANA_DASHBOARDS_DIR),
    ):
        copied.update(tree_files(monitoring.joinpath(source), target))
    return copied


def tree_files(node: Traversable, prefix: str) -> dict[str, str]:
    """``prefix/relative path -> text`` of every file below ``node``."""
    found: dict[str, str] = {}
    for child in node.iterdir():
        if child.is_dir():
            found.update(tree_files(child, f"{prefix}/{child.name}"))
        elif not child.name.endswith((".py", ".pyc")):
            found[f"{prefix}/{child.name}"] = child.read_text(encoding="utf-8")
    return found


def compose_nginx_site(
    replicas: list[str], listen: str, *, resolver: str = DOCKER_DNS, valid_s: int = RESOLVE_VALID_S
) -> str:
    """The shared NGINX site over ``replicas``, with their names resolved at run time."""
    return resolve_at_run_time(render_nginx_site(replicas, listen), resolver, valid_s)


def compose_edge_site(
    limits: EdgeLimits, *, resolver: str = DOCKER_DNS, valid_s: int = RESOLVE_VALID_S
) -> str:
    """The edge's site: TLS on :data:`EDGE_PORT` with the mounted pair, in front of the
    gateway (its name resolved at run time: a recreated gateway gets a new address)."""
    tls = EdgeTls(
        PurePosixPath(EDGE_TLS_MOUNT, "cert.pem"), PurePosixPath(EDGE_TLS_MOUNT, "key.pem")
    )
    site = render_edge_site(
        f"gateway:{GATEWAY_PORT}",
        str(EDGE_PORT),
        limits,
        tls=tls,
        health_listen=EDGE_HEALTH_LISTEN,
    )
    return resolve_at_run_time(site, resolver, valid_s)


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


def write_bundle(files: dict[str, str], root: Path) -> list[Path]:
    """Write a bundle under ``root``: each file atomically, and the kit's copied sources as a
    whole new directory (:func:`write_tree`: nothing of an older kit is left in the image)."""
    sources = {
        k[len(COPIED_SOURCES) :]: v for k, v in files.items() if k.startswith(COPIED_SOURCES)
    }
    rest = {k: v for k, v in files.items() if not k.startswith(COPIED_SOURCES)}
    written = write_tree(sources, root / COPIED_SOURCES) if sources else []
    return written + write_files(rest, root)


def write_tree(files: dict[str, str], directory: Path) -> list[Path]:
    """``files`` (paths relative to ``directory``) as all of ``directory``: written into a
    new directory beside it, which then takes its place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{directory.name}."
    fresh = Path(tempfile.mkdtemp(dir=directory.parent, prefix=prefix, suffix=".tmp"))
    old = fresh.with_suffix(".old")
    try:
        fresh.chmod(0o755)
        write_files(files, fresh)
        if directory.exists():
            directory.rename(old)
        fresh.rename(directory)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return [directory / relative for relative in files]


def write_files(files: dict[str, str], root: Path) -> list[Path]:
    """Write each file under ``root`` atomically (temp file + rename); return the paths."""
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        written.append(path)
    return written


def write_atomic(path: Path, text: str, *, mode: int = 0o644, replace: bool = True) -> bool:
    """Write ``text`` to a temp file beside ``path``, then move it there. With ``replace``
    false an existing ``path`` is kept (a hard link never overwrites): return whether the
    file was written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)
