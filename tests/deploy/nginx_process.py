"""A real NGINX, run as this user from a config rendered by ``vkit.nginx_conf``."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from vkit.nginx_conf import ProxyTuning, nginx_argv, render_nginx_conf
from vkit.stack.ports import free_port


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("nginx is not installed (Debian package: nginx-light or nginx)")
    return found


@contextmanager
def running_nginx(
    prefix: Path, upstreams: list[str], tuning: ProxyTuning | None = None
) -> Iterator[str]:
    """Start NGINX in the foreground on a free port; yield its base URL; always stop it."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(upstreams, f"127.0.0.1:{port}", tuning=tuning))
    base_url = f"http://127.0.0.1:{port}"
    with nginx_process(conf, prefix, nginx_binary()) as proc:
        _wait_healthy(proc, base_url, prefix)
        yield base_url


@contextmanager
def nginx_process(conf: Path, prefix: Path, binary: str) -> Iterator[subprocess.Popen[bytes]]:
    """NGINX in the foreground on ``conf``; always stopped (TERM, then KILL) on the way out."""
    argv = nginx_argv(conf, prefix, binary=binary)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, prefix: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx exited with {proc.returncode}: {log}")
        try:
            if httpx.get(f"{base_url}/nginx_health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("nginx did not answer /nginx_health within 10 s")
