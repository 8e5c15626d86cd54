"""The vLLM readiness probe means "serves the model": run the built overlay's exec probe
against a real HTTP server that answers as vLLM does (``--api-key`` on ``/v1``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tests.deploy.test_k8s_render import built

KEY = "probe-test-key"


class VllmLike(BaseHTTPRequestHandler):
    models: ClassVar[list[str]] = []
    status: ClassVar[int] = 200

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._answer(401, {"error": "Unauthorized"})
        elif self.path == "/v1/models":
            self._answer(self.status, {"object": "list", "data": [{"id": m} for m in self.models]})
        else:
            self._answer(404, {})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), VllmLike)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def probe(server: ThreadingHTTPServer, key: str) -> int:
    """Exit status of the rtx4090 overlay's readiness command, pointed at ``server``."""
    sts = next(o for o in built("rtx4090-llama-3.1-8b-awq") if o["kind"] == "StatefulSet")
    command = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    script = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{server.server_address[1]}")
    result = subprocess.run(
        [sys.executable, "-c", script], env={"VLLM_API_KEY": key}, capture_output=True, timeout=30
    )
    return result.returncode


@pytest.mark.parametrize(
    ("models", "status", "key", "ready"),
    [
        (["llama-3.1-8b"], 200, KEY, True),
        (["other-model"], 200, KEY, False),  # up, but not serving this model
        ([], 200, KEY, False),
        (["llama-3.1-8b"], 503, KEY, False),
        (["llama-3.1-8b"], 200, "wrong-key", False),  # 401: the key is really sent and checked
    ],
)
def test_ready_only_when_the_served_model_is_listed(
    server: ThreadingHTTPServer, models: list[str], status: int, key: str, ready: bool
) -> None:
    VllmLike.models, VllmLike.status = models, status
    assert (probe(server, key) == 0) is ready
