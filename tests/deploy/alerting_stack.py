"""Real Prometheus and Alertmanager processes over a stand-in replica, for alerting tests.

    with WebhookReceiver() as receiver, AlertingStack(tmp_path, receiver.url) as stack:
        stack.wait_for_scrape("process_start_time_seconds")
        stack.replica.script.start_time += 600   # the replica restarted
        notification = receiver.wait_for("ReplicaRestarted", timeout=60)

Prometheus gets the rendered config (:func:`vkit.render.prometheus.build_prometheus_config`,
scraping and evaluating every second) and the shipped rules; Alertmanager is started by the
shipped ``start.sh`` with the webhook URL in its environment and the shipped receiver, only
grouping in seconds instead of minutes. Skips when a binary is missing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread
from vkit.render.alertmanager import build_alertmanager_config
from vkit.render.prometheus import build_cost_rules, build_prometheus_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES_DIR = DEPLOY / "monitoring" / "rules"
START_SCRIPT = DEPLOY / "docker" / "alertmanager" / "start.sh"
START_TIME = 1_764_580_000.0


def binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.skip(f"{' or '.join(names)} is not installed (Debian: prometheus-alertmanager)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler with a one-call answer and no access log."""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port until the block ends; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class WebhookReceiver:
    """Where Alertmanager POSTs: keeps each notification's JSON."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._serving: contextlib.AbstractContextManager[int] | None = None
        self.url = ""

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Hook(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length))
                with receiver._arrived:
                    receiver.notifications.append(payload)
                    receiver._arrived.notify_all()
                self._answer(200, b"")

        self._serving = serving(Hook)
        port = self._serving.__enter__()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._serving is not None:
            self._serving.__exit__(kind, error, tb)

    def wait_for(self, alertname: str, timeout: float) -> dict[str, Any]:
        """The first notification for ``alertname``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for payload in self.notifications:
                    if payload.get("groupLabels", {}).get("alertname") == alertname:
                        return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [n.get("groupLabels") for n in self.notifications]
                    raise AssertionError(f"no {alertname} notification in {timeout} s: {got}")
                self._arrived.wait(left)


class AlertingStack:
    """Prometheus -> Alertmanager -> ``webhook_url``, over one stand-in replica."""

    def __init__(self, root: Path, webhook_url: str) -> None:
        self.root = root
        self.webhook_url = webhook_url
        self.replica = ScriptedUpstream()  # replaced by the running one on entering
        self.prometheus_url = ""
        self._stack = contextlib.ExitStack()
        self._binaries = (binary("prometheus"), binary("alertmanager", "prometheus-alertmanager"))

    def __enter__(self) -> AlertingStack:
        try:
            script = Script(start_time=START_TIME)
            self.replica = self._stack.enter_context(standin_in_thread(script))
            alertmanager = self._start_alertmanager(free_port())
            self._start_prometheus(free_port(), alertmanager)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def wait_for_scrape(self, metric: str, timeout: float = 30) -> None:
        query = urllib.parse.urlencode({"query": metric})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = http_get(f"{self.prometheus_url}/api/v1/query?{query}")
            if status == 200 and json.loads(body)["data"]["result"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not scrape {metric} in {timeout} s")

    def _start_alertmanager(self, port: int) -> str:
        config_dir = self.root / "alertmanager"
        data = self.root / "alertmanager-data"
        config_dir.mkdir()
        data.mkdir()
        shutil.copy(START_SCRIPT, config_dir / "start.sh")
        quick = build_alertmanager_config(
            group_wait="1s", group_interval="1s", repeat_interval="1m"
        )
        (config_dir / "alertmanager.yml").write_text(yaml.safe_dump(quick, sort_keys=False))
        argv = [
            "sh", str(config_dir / "start.sh"), self._binaries[1],
            f"--config.file={data / 'alertmanager.yml'}", f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        ]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "ALERTMANAGER_WEBHOOK_URL": self.webhook_url}
        self._run("alertmanager", argv, env, f"http://127.0.0.1:{port}/-/ready")
        return f"127.0.0.1:{port}"

    def _start_prometheus(self, port: int, alertmanager: str) -> None:
        config = build_prometheus_config(
            [self.replica.address],
            f"127.0.0.1:{free_port()}",  # no gateway: GatewayDown waits 2 minutes
            None,
            alertmanager_target=alertmanager,
            scrape_interval_s=1,
        )
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        cost = build_cost_rules(["0"], "rtx4090", 0.39)
        (self.root / "cost.rules.yml").write_text(yaml.safe_dump(cost, sort_keys=False))
        shutil.copytree(RULES_DIR, self.root / "rules")
        argv = [
            self._binaries[0], f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]  # fmt: skip
        self.prometheus_url = f"http://127.0.0.1:{port}"
        self._run("prometheus", argv, {"PATH": "/usr/bin:/bin"}, f"{self.prometheus_url}/-/ready")

    def _run(self, name: str, argv: list[str], env: dict[str, str], ready_url: str) -> None:
        log = self._stack.enter_context((self.root / f"{name}.log").open("w"))
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._stack.callback(stop, process)
        deadline = time.monotonic() + 30
        while http_get(ready_url)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / f"{name}.log").read_text()[-2000:]
                raise AssertionError(f"{name} did not become ready:\n{tail}")
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
