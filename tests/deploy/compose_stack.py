"""A rendered compose bundle brought up under the real Docker engine, for the compose test.

:func:`render_cpu_bundle` renders ``vkit render compose --gpu cpu`` into a directory;
:class:`ComposeStack` writes its ``.env`` and an override naming the images built here
(``tests/docker_images.py``), runs ``docker-compose`` on it as project :data:`PROJECT`, and
tears everything down (containers, networks, volumes) however the test ends.
:class:`WebhookReceiver` is Alertmanager's webhook on the host, reachable from containers.
"""

from __future__ import annotations

import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.deploy.wheel_kit import InstalledKit

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "vkit-test-compose"
# Services the test starts: every one but Grafana (no Debian package to build it from).
NOT_STARTED = frozenset({"grafana"})
# compose service -> the image built here that stands in for the one the file names.
IMAGE_OF = {
    "nginx": "nginx",
    "edge": "nginx",
    "gateway": "gateway",
    "redis": "redis",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
}
RULES_IN_CONTAINER = "/etc/prometheus/rules"
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[compose-up {time.strftime('%H:%M:%S')}] {message}", flush=True)


def vkit(*args: str, cwd: Path = ROOT, kit: InstalledKit | None = None) -> str:
    """Run the kit's CLI as a user does (the checkout's, or an installed wheel's ``kit``);
    its stdout (raises with stderr on failure)."""
    command = [str(kit.vkit)] if kit else [sys.executable, "-m", "vkit"]
    done = subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=kit.env if kit else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"vkit {' '.join(args)}: {done.stderr}"
    return done.stdout


def render_cpu_bundle(
    out: Path, *, cores: str, context: int, kit: InstalledKit | None = None
) -> Path:
    """``vkit render compose --gpu cpu`` into ``out``: the compose file's path (the bundle is
    self-contained: everything the file mounts or builds is written beside it)."""
    compose = out / "compose.yaml"
    vkit(
        *("render", "compose", "--gpu", "cpu", "--gpus", cores, "--model", "tiny-llama"),
        *("--context", str(context), "--out", str(compose)),
        cwd=out.parent,
        kit=kit,
    )
    return compose


def bundle_differences(one: Path, other: Path) -> list[str]:
    """Files that differ between two bundles, or are in one only (``.env`` aside: its
    secrets are fresh on every render)."""

    def files(root: Path) -> dict[str, bytes]:
        found = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        found.pop(".env", None)
        return found

    left, right = files(one), files(other)
    return sorted(name for name in left.keys() | right.keys() if left.get(name) != right.get(name))


def rules_dir(compose: Path) -> Path:
    """The host directory the bundle's Prometheus reads its alert rules from."""
    volumes = yaml.safe_load(compose.read_text())["services"]["prometheus"]["volumes"]
    (source,) = [v.split(":")[0] for v in volumes if v.split(":")[1] == RULES_IN_CONTAINER]
    return (compose.parent / source).resolve()


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 1) -> T:
    """``probe()`` until it returns something (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception as exc:  # not up yet: connection refused, 502, ...
            last = exc
        else:
            if got is not None:
                return got
        time.sleep(every_s)
    raise AssertionError(f"{what}: nothing after {timeout_s:.0f} s (last error: {last!r})")


class ComposeStack:
    """``docker-compose`` on one rendered bundle, with the test's images and ``.env``."""

    def __init__(
        self,
        compose: Path,
        images: Mapping[str, str],
        env: Mapping[str, str],
        *,
        build_args: Mapping[str, str] | None = None,
        project: str = PROJECT,
    ):
        """``build_args``: build the gateway from the bundle's own context with these
        arguments (tagged ``VKIT_GATEWAY_IMAGE`` of ``env``), not ``images``' gateway;
        ``project``: the compose project's name (two stacks up at once need two)."""
        self.compose = compose
        self.project = project
        self.override = compose.parent / "images.override.yaml"
        self.env = dict(env)
        self.images = dict(images)
        self.build_args = dict(build_args) if build_args is not None else None

    def write(self) -> None:
        """``.env`` beside the compose file, and the override: each service's image (and,
        while the bundle has no keys group of its own, the gateway's supplementary group)."""
        lines = [f"{key}={value}" for key, value in self.env.items()]
        (self.compose.parent / ".env").write_text("\n".join(lines) + "\n")
        rendered = yaml.safe_load(self.compose.read_text())["services"]
        services: dict[str, Any] = {}
        for name in rendered:
            image = self.images.get("vllm-cpu" if name.startswith("vllm-") else IMAGE_OF.get(name))
            if name == "gateway" and self.build_args is not None:
                services[name] = {"build": {"args": self.build_args}}
            elif image is not None:
                services[name] = {"image": image}
        if "group_add" not in rendered["gateway"] and "VKIT_KEYS_GID" in self.env:
            services["gateway"]["group_add"] = [self.env["VKIT_KEYS_GID"]]
        self.override.write_text(yaml.safe_dump({"services": services}, sort_keys=False))

    @property
    def services(self) -> list[str]:
        rendered = yaml.safe_load(self.compose.read_text())["services"]
        return [name for name in rendered if name not in NOT_STARTED]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "-p", self.project, "-f", str(self.compose)]
        command += ["-f", str(self.override), *args]
        return subprocess.run(
            command,
            cwd=self.compose.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def must(self, *args: str, timeout: float = 600) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout

    def up(self) -> None:
        if self.build_args is not None:
            self.must("build", "gateway", timeout=900)
        self.must("up", "-d", "--no-build", *self.services)

    def container(self, service: str) -> str:
        (container_id,) = self.must("ps", "-q", service).split()
        return container_id

    def exec(self, service: str, *command: str) -> str:
        return docker("exec", self.container(service), *command)

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60").stdout

    def down(self, grace_s: int | None = None) -> float:
        """``docker-compose down`` (volumes and orphans too): its seconds."""
        started = time.monotonic()
        args = ["down", "-v", "--remove-orphans"]
        if grace_s is not None:
            args += ["-t", str(grace_s)]
        self.must(*args, timeout=900)
        seconds = time.monotonic() - started
        if self.build_args is not None and self.env.get("VKIT_GATEWAY_IMAGE"):
            subprocess.run(
                ["docker", "rmi", "-f", self.env["VKIT_GATEWAY_IMAGE"]],
                capture_output=True,
                timeout=120,
                check=False,
            )
        return seconds

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of the project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in ("container", "network", "volume"):
            extra = ["-a"] if kind == "container" else []
            out = docker(kind, "ls", *extra, "-q", "--filter", label)
            found += [f"{kind} {name}" for name in out.split()]
        return found


def docker(*args: str) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def new_secret() -> str:
    return secrets.token_urlsafe(24)


class WebhookReceiver:
    """Alertmanager's webhook: an HTTP server on ``host`` that keeps every POSTed body."""

    def __init__(self, host: str):
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/alerts"

    @contextmanager
    def running(self) -> Iterator[WebhookReceiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()

    def alert_names(self) -> set[str]:
        return {
            alert["labels"].get("alertname", "")
            for body in self.bodies
            for alert in body.get("alerts", [])
        }
