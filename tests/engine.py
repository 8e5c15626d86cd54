"""pytest plugin: two real vLLM CPU replicas of the tiny model, shared by the whole session.

Registered in ``tests/conftest.py`` (``pytest_plugins = ["tests.engine"]``); run alone with
``-p tests.engine``. The fixture :func:`vllm_replicas` builds the tiny model once
(:func:`launcher.supervision.tiny_model.build_tiny_model`), starts both replicas in parallel through
``vkit launch --cpu`` (each pinned to its own core and in its own process group of the tests'
session, ``VLLM_CPU_KVCACHE_SPACE=1``,
``--enforce-eager``, ``--max-model-len 2048``, served as ``tiny-llama``, logs to files),
waits for them with a bounded timeout, and stops them at the end (SIGTERM, then SIGKILL).

    def test_something(vllm_replicas):
        replica = vllm_replicas[0]
        httpx.get(f"{replica.base_url}/v1/models")
        replica.kill(); replica.start(); replica.wait_ready(300)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.supervision.readiness import ReadinessCheck
from launcher.supervision.readiness_probe import VllmProbe
from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from vkit.stack.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
REPLICAS = 2
MAX_MODEL_LEN = 2048  # room for generations that outlast the E2E timeouts
KV_CACHE_SPACE_GIB = 1
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 40


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (vkit launch -> vLLM API server -> engine core)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


class EngineReplica:
    """One ``vkit launch --cpu`` process serving the tiny model on 127.0.0.1:``port``."""

    def __init__(
        self,
        *,
        model_dir: Path,
        port: int,
        cpu_core: int,
        log_path: Path,
        model: str = TINY_MODEL_NAME,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_dir = model_dir
        # Further `vkit launch` arguments; vLLM flags of their own go after "--".
        self.extra_args = extra_args
        self.port = port
        self.cpu_core = cpu_core
        self.log_path = log_path
        self.model = model
        self._proc: subprocess.Popen[bytes] | None = None
        self._terminated = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vkit",
            "launch",
            "--cpu",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--enforce-eager",
            "--shutdown-timeout",
            "5",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start (or restart) the replica on the same port; returns at once."""
        if self.running:
            raise RuntimeError(f"replica on port {self.port} is already running")
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_SPACE_GIB),
            "VLLM_CPU_OMP_THREADS_BIND": str(self.cpu_core),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self._terminated = False
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
                # Its own process group, in the tests' session: a session of its own is a
                # scheduling group of its own (the kernel's autogroup), and a generating
                # replica's group then held both CPUs for seconds, the tests' process and
                # the replica's own API server waiting (docs/vllm-server.md#one-scheduling-group).
                process_group=0,
            )

    @property
    def pid(self) -> int:
        """The ``vkit launch`` process's (vLLM's server and engine core are below it)."""
        if self._proc is None:
            raise RuntimeError(f"replica on port {self.port} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the replica at once: vkit launch, the vLLM server and its engine core."""
        if self._proc is None:
            return
        for pid in _process_tree(self._proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait(timeout=30)
        self._reap_port()

    def terminate(self) -> None:
        """SIGTERM once: vkit launch forwards it and vLLM drains (--shutdown-timeout)."""
        if self.running and not self._terminated:
            self._terminated = True
            self._proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """:meth:`terminate`, then SIGKILL whatever is left after ``grace_s``."""
        if self._proc is None:
            return
        self.terminate()
        if self._proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace_s)
        self.kill()

    def _reap_port(self, timeout_s: float = 30.0) -> None:
        """Wait until leftover children let go of the port (so start() can bind it again)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until ready; fail the test with the log's last lines on exit or timeout."""
        deadline = time.monotonic() + timeout
        probe = VllmProbe(self.base_url, ReadinessCheck.of(models=[self.model]))
        while time.monotonic() < deadline:
            if probe.ready():
                return
            if not self.running:
                code = None if self._proc is None else self._proc.returncode
                pytest.fail(
                    f"replica on port {self.port} exited ({code}) before it was "
                    f"ready; {self.log_path} ends:\n{self.log_tail()}"
                )
            time.sleep(1.0)
        pytest.fail(
            f"replica on port {self.port} not ready after {timeout:.0f} s; "
            f"{self.log_path} ends:\n{self.log_tail()}"
        )

    def metrics_text(self) -> str:
        response = httpx.get(f"{self.base_url}/metrics", timeout=10.0)
        response.raise_for_status()
        return response.text


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / TINY_MODEL_NAME)


@pytest.fixture(scope="session")
def vllm_replicas(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[EngineReplica]]:
    """Two CPU replicas, started in parallel and reused by every engine test."""
    logs = tmp_path_factory.mktemp("engine-logs")
    cores = os.cpu_count() or 1
    ports: set[int] = set()
    while len(ports) < REPLICAS:
        ports.add(free_port())
    replicas = [
        EngineReplica(
            model_dir=tiny_model_dir,
            port=port,
            cpu_core=index % cores,
            log_path=logs / f"replica-{index}.log",
        )
        for index, port in enumerate(sorted(ports))
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(READY_TIMEOUT_S)
        yield replicas
    finally:
        for replica in replicas:
            replica.terminate()  # both drain in parallel
        for replica in replicas:
            replica.stop()


# The capped replica: vLLM's admission cap (4 requests in flight) and priority scheduling,
# one request running at a time so that the others wait in vLLM's queue, in its order.
CAPPED_QUEUED_REQS = 4
CAPPED_ARGS = (
    "--",
    "--max-num-queued-reqs",
    str(CAPPED_QUEUED_REQS),
    "--scheduling-policy",
    "priority",
    "--max-num-seqs",
    "1",
)


@contextlib.contextmanager
def started_replica(
    model_dir: Path, log_dir: Path, extra_args: tuple[str, ...], name: str
) -> Iterator[EngineReplica]:
    """One more CPU replica with ``extra_args`` (vLLM flags after ``"--"``), on the last
    core, ready when entered and stopped on exit: a module's replica of its own."""
    replica = EngineReplica(
        model_dir=model_dir,
        port=free_port(),
        cpu_core=(os.cpu_count() or 1) - 1,
        log_path=log_dir / f"{name}.log",
        extra_args=extra_args,
    )
    try:
        replica.start()
        replica.wait_ready(READY_TIMEOUT_S)
        yield replica
    finally:
        replica.stop()


def module_replica(extra_args: tuple[str, ...], name: str) -> Any:
    """A module-scoped fixture: one CPU replica with ``extra_args`` (:func:`started_replica`),
    stopped after its module (CI's engines share two cores)."""

    @pytest.fixture(scope="module")
    def replica(
        tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[EngineReplica]:
        logs = tmp_path_factory.mktemp(f"{name}-logs")
        with started_replica(tiny_model_dir, logs, extra_args, name) as started:
            yield started

    return replica


# One CPU replica started with CAPPED_ARGS, shared by a module's admission tests.
capped_replica = module_replica(CAPPED_ARGS, "capped")
