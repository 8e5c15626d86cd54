"""sd_notify: READY=1 once vLLM serves, WATCHDOG=1 while healthy, over a real AF_UNIX socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from launcher.supervision.readiness import HealthWatcher, SystemdNotifier, VllmProbe


class ScriptedProbe:
    """Not ready for the first ``not_ready_polls`` polls; healthy until ``hang()``."""

    def __init__(self, not_ready_polls: int) -> None:
        self.not_ready_polls = not_ready_polls
        self.alive = True

    def ready(self) -> bool:
        self.not_ready_polls -= 1
        return self.not_ready_polls < 0

    def healthy(self) -> bool:
        return self.alive


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def test_ready_then_watchdog_then_silence_when_hung(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    probe = ScriptedProbe(not_ready_polls=3)
    watcher = HealthWatcher(
        probe=probe, notifier=SystemdNotifier(path), watchdog_interval_s=0.1, poll_s=0.01
    )
    watcher.start()
    try:
        assert sock.recv(512).startswith(b"READY=1")
        assert probe.not_ready_polls < 0  # not before the probe said ready
        assert sock.recv(512) == b"WATCHDOG=1"
        probe.alive = False  # a hung engine: no more pings, so systemd's watchdog fires
        time.sleep(0.15)
        sock.settimeout(0.3)
        drained = []
        try:
            while True:
                drained.append(sock.recv(512))
        except TimeoutError:
            pass
        assert len(drained) <= 1  # at most one ping already in flight
    finally:
        watcher.stop()
    sock.settimeout(5)
    assert sock.recv(512) == b"STOPPING=1"


def test_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    assert SystemdNotifier(str(tmp_path / "missing")).send("READY=1") is False


class _FakeVllm(BaseHTTPRequestHandler):
    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": m} for m in self.served]}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_vllm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_wants_health_and_the_model_listed(fake_vllm: str) -> None:
    probe = VllmProbe(fake_vllm, timeout_s=2.0)
    _FakeVllm.served = []
    assert probe.healthy() and not probe.ready()  # /health answers before the model is served
    _FakeVllm.served = ["tiny-llama"]
    assert probe.ready() and probe.ready("tiny-llama")
    assert not probe.ready("other-model")
    assert not VllmProbe("http://127.0.0.1:9", timeout_s=0.5).ready()  # nothing listening
