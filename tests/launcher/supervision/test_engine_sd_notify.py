"""``vkit launch`` under a ``Type=notify`` unit, on the real CPU engine (slow tier).

The test plays systemd: it binds an AF_UNIX datagram socket, starts ``vkit launch --cpu``
of the tiny model with ``NOTIFY_SOCKET`` pointing at it, ``WATCHDOG_USEC`` (4 s) and
``VLLM_API_KEY`` set (so ``/v1/models`` is 401 without the key), and records every
datagram with its arrival time. It checks what systemd relies on:

- no ``READY=1`` while the model does not serve: every ``/v1/models`` poll (with the key)
  that failed began before READY=1 arrived, and right after READY=1 it serves;
- then ``WATCHDOG=1`` at least every ``WATCHDOG_USEC/2`` + slack -- also while long
  generations are in flight, the case where a slow health probe used to delay a ping past
  the watchdog interval;
- ``STOPPING=1`` when the unit is stopped (SIGTERM).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from launcher.supervision.tiny_model import TINY_MODEL_NAME
from tests.engine import KV_CACHE_SPACE_GIB, MAX_MODEL_LEN, REPO_ROOT
from vkit.stack.ports import free_port

pytestmark = pytest.mark.engine

WATCHDOG_S = 8.0  # short enough for a quick test, long enough for a loaded 2-CPU box
PING_SLACK_S = 1.5  # thread scheduling on 2 shared CPUs; still below the watchdog itself
READY_TIMEOUT_S = 300.0  # 2 CPUs, maybe shared with another engine suite
API_KEY = "sd-notify-test-key"
LONG_TOKENS = 1500
LONG_STREAMS = 3
BUSY_ROUNDS_MAX = 6  # rounds of LONG_STREAMS streams while busy (a fast CPU needs more)


@dataclass
class Datagrams:
    """Every sd_notify datagram received, with its arrival time (monotonic)."""

    sock: socket.socket
    received: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.received.append((time.monotonic(), data.decode()))

    def times_of(self, prefix: str) -> list[float]:
        with self.lock:
            return [at for at, text in self.received if text.startswith(prefix)]

    def texts(self) -> list[str]:
        with self.lock:
            return [text for _, text in self.received]


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[Path]:
    """A socket path in tmp_path, or in a short temporary directory when tmp_path is too
    long for sun_path (108 bytes)."""
    path = tmp_path / "notify"
    if len(str(path)) < 100:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sd-") as short:
        yield Path(short) / "notify"


@pytest.fixture
def datagrams(notify_path: Path) -> Iterator[Datagrams]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    received = Datagrams(sock)
    thread = threading.Thread(target=received.run, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        received.stopped.set()
        thread.join(timeout=5)
        sock.close()


def launch_argv(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vkit", "launch", "--cpu",
        "--model", str(model_dir), "--served-model-name", TINY_MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--shutdown-timeout", "2",
    ]  # fmt: skip


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        pids = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def serves_model(base_url: str) -> bool:
    """``/v1/models`` answers 200 with the key and lists the tiny model."""
    try:
        response = httpx.get(
            f"{base_url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}, timeout=5.0
        )
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    return any(m.get("id") == TINY_MODEL_NAME for m in response.json().get("data", []))


def long_stream(base_url: str) -> int:
    """One streamed completion of exactly LONG_TOKENS tokens; returns its usage's count."""
    body = {
        "model": TINY_MODEL_NAME,
        "prompt": "Tell me a long story about a GPU",
        "max_tokens": LONG_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    completion_tokens = 0
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{base_url}/v1/completions", json=body, headers=headers, timeout=600.0
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[len("data: ") :]).get("usage")
                if usage:
                    completion_tokens = usage["completion_tokens"]
    return completion_tokens


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a timestamp in ``times``."""
    inside = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def test_ready_only_once_serving_then_watchdog_pings_under_load(
    tiny_model_dir: Path, notify_path: Path, datagrams: Datagrams, tmp_path: Path
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
        "VLLM_API_KEY": API_KEY,
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_SPACE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "launch.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            launch_argv(tiny_model_dir, port),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=REPO_ROOT, start_new_session=True,
        )  # fmt: skip

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    try:
        # 1. Until READY=1: poll /v1/models (with the key); remember when failed polls began.
        failed_polls: list[float] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not datagrams.times_of("READY=1"):
            assert proc.poll() is None, f"vkit launch exited ({proc.returncode}):\n{log_tail()}"
            assert time.monotonic() < deadline, f"no READY=1 in time:\n{log_tail()}"
            began = time.monotonic()
            if not serves_model(base_url):
                failed_polls.append(began)
            time.sleep(0.2)
        ready_at = datagrams.times_of("READY=1")[0]
        assert failed_polls, "the engine served before the test could see it not serving"
        early = [t for t in failed_polls if t > ready_at]
        assert early == [], f"READY=1 came {len(early)} poll(s) before the model served"
        assert serves_model(base_url)
        # The key is what made the watcher see it ready: without it, vLLM refuses.
        assert httpx.get(f"{base_url}/v1/models", timeout=5.0).status_code == 401
        assert [t for t in datagrams.times_of("WATCHDOG=1") if t < ready_at] == []

        # 2. Pings at the interval while idle for a while ...
        idle_until = ready_at + 3 * WATCHDOG_S
        while time.monotonic() < idle_until:
            time.sleep(0.2)
        # 3. ... and while long streams keep the engine (and the API server) busy.
        # Rounds of streams until the busy time is longer than the largest gap allowed below,
        # so a missed ping would show, however fast this machine generates (one round was
        # 5.5 s on a fast CPU, under that bound).
        busy_from = time.monotonic()
        with ThreadPoolExecutor(LONG_STREAMS) as pool:
            for _ in range(BUSY_ROUNDS_MAX):
                chunks = list(pool.map(lambda _: long_stream(base_url), range(LONG_STREAMS)))
                assert chunks == [LONG_TOKENS] * LONG_STREAMS
                if time.monotonic() - busy_from > 0.75 * WATCHDOG_S:
                    break
        busy_until = time.monotonic()
        assert busy_until - busy_from > 0.75 * WATCHDOG_S, "the generations were too short"

        pings = datagrams.times_of("WATCHDOG=1")
        bound = WATCHDOG_S / 2 + PING_SLACK_S
        assert max_gap(pings, ready_at, busy_from) <= bound, pings
        busy_gap = max_gap(pings, busy_from, busy_until)
        print(  # measured numbers, shown with -s
            f"READY=1 {ready_at - failed_polls[-1]:.2f} s after the last failed poll; longest "
            f"ping gap idle {max_gap(pings, ready_at, busy_from):.2f} s, busy {busy_gap:.2f} s "
            f"over {busy_until - busy_from:.1f} s of generation"
        )
        # Busy, a ping may come one health check late, never so late that systemd's watchdog
        # (WatchdogSec = WATCHDOG_S) would fire. On a 2-CPU box where the CPU engine, its API
        # server, this test's three streams and the supervisor share the cores, gaps of up to
        # 7.3 s were measured over 11 s of generation (4.0 s on a quiet run).
        assert busy_gap < WATCHDOG_S, f"{busy_gap:.2f} s without a ping while generating"
        assert proc.poll() is None

        # 4. Stopping: SIGTERM (systemctl stop) drains, and systemd hears STOPPING=1.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while "STOPPING=1" not in datagrams.texts():
            assert time.monotonic() < deadline, datagrams.texts()[-5:]
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
