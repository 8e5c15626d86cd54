"""A real gateway process and a real edge NGINX in front of it, and the slow clients that
attack them; every socket and process is closed on the way out.

The gateway runs as ``vkit gateway`` does, with its descriptors limited to
:data:`GATEWAY_NOFILE` (a host's usual soft limit is 1024; a lower one keeps the attack a
few hundred sockets). Probes come from a second loopback address (127.0.0.2), so that a
per-address limit on the attacker (127.0.0.1) is not one on them.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.keyfile import add_key
from gateway.settings_env import settings_env, settings_from_values
from tests.deploy.nginx_process import nginx_binary, nginx_process
from vkit.edge_conf import EdgeLimits, EdgeTls, render_edge_conf
from vkit.stack.ports import free_port

GATEWAY_NOFILE = 256
PROBE_SOURCE = "127.0.0.2"  # a client other than the attacker (all of 127/8 is loopback)
MODEL = "tiny-llama"


@dataclass(frozen=True)
class Gateway:
    url: str
    address: str  # host:port
    secret: str
    pid: int

    def cpu_s(self) -> float:
        """User + system CPU seconds the gateway process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (GATEWAY_NOFILE, GATEWAY_NOFILE))


@contextmanager
def gateway_process(tmp: Path, upstream_url: str) -> Iterator[Gateway]:
    """``vkit gateway`` on a free loopback port over ``upstream_url``, with one key."""
    keys = tmp / "keys.yaml"
    secret = add_key(keys, "client", models=(MODEL,))
    port = free_port()
    settings = settings_from_values(
        {"host": "127.0.0.1", "port": port, "upstreams": [upstream_url], "keys_file": str(keys)}
    )
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    log = (tmp / "gateway.log").open("wb")
    argv = [sys.executable, "-m", "vkit", "gateway"]
    proc = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_fds
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/livez", proc, tmp / "gateway.log")
        yield Gateway(url, f"127.0.0.1:{port}", secret, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@contextmanager
def edge_process(
    tmp: Path, gateway: Gateway, limits: EdgeLimits, tls: EdgeTls | None = None
) -> Iterator[str]:
    """The edge NGINX on a free loopback port (all addresses of 127/8) in front of
    ``gateway``; yields its port."""
    port = free_port()
    prefix = tmp / "edge"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_edge_conf(gateway.address, str(port), limits, tls=tls))
    with nginx_process(conf, prefix, nginx_binary()) as proc:
        scheme = "https" if tls else "http"
        verify: str | bool = str(tls.certificate) if tls else False
        wait_for(f"{scheme}://localhost:{port}/livez", proc, prefix / "error.log", verify=verify)
        yield str(port)


def wait_for(
    url: str, proc: subprocess.Popen[bytes], log: Path, *, verify: str | bool = False
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}: {text[-2000:]}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within 60 s")


def probe(url: str, *, secret: str | None = None, timeout: float = 3.0) -> int | str:
    """A fresh client from :data:`PROBE_SOURCE`: ``GET /livez``, or with ``secret`` a chat
    completion; the status, or the transport error's name."""
    transport = httpx.HTTPTransport(local_address=PROBE_SOURCE)
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            if secret is None:
                return client.get(f"{url}/livez").status_code
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {secret}"}
            return client.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


@contextmanager
def slow_heads(
    port: int, count: int, begun: bytes = b"GET /livez HTTP/1.1\r\nHost: edge\r\nX-Slow: "
) -> Iterator[list[socket.socket]]:
    """``count`` connections from 127.0.0.1, each with a request head (or with TLS, a
    handshake) ``begun`` and never finished; all closed when the block ends."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            sock.sendall(begun)
            sockets.append(sock)
        yield sockets


def slow_bodies(
    port: int, count: int, secret: str, length: int = 65536
) -> AbstractContextManager[list[socket.socket]]:
    """``count`` connections, each with a whole head announcing ``length`` bytes of body and
    one byte of it sent; all closed when the block ends."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n{{"
    ).encode()
    return slow_heads(port, count, head)


def trickled_body(length: int) -> bytes:
    """A valid chat completion body of exactly ``length`` bytes."""
    start = f'{{"model": "{MODEL}", "max_tokens": 4, "messages": [{{"role": "user", "content": "'
    end = '"}]}'
    fill = length - len(start) - len(end)
    return (start + "a" * fill + end).encode()


def trickle(port: int, secret: str, body: bytes) -> bytes:
    """POST ``body`` one byte per send (Nagle off); the answer's first bytes."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        for index in range(len(body)):
            sock.send(body[index : index + 1])
        return sock.recv(4096)


def closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    """True when the other end closed ``sock`` (after any answer it sent) within ``wait_s``."""
    sock.settimeout(wait_s)
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False
