"""``vkit up`` end to end: banner, one SDK call with the printed key, Ctrl-C, nothing left.

Its own stack, beside the session's: its own run dir and free ports, and nothing it checks
(its banner, its key, its children, its ports) is shared with the session stack, so it runs
in any order. When the session replicas are already up, its replica starts next to two
idle engines on the same cores; the start-up deadlines allow for that.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.clients import sdk
from vkit.stack.ports import pick_free_ports, port_in_use
from vkit.stack.proctree import descendants, is_alive, kill_all

pytestmark = pytest.mark.engine

BANNER_TIMEOUT_S = 420.0


class Output:
    """Collects a child's stdout lines in a thread, so waits on it stay bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stdout:  # closed at the child's end, not left to the garbage collector
            for line in self._stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def stack_ports(run_dir: Path) -> list[int]:
    conf = (run_dir / "nginx" / "nginx.conf").read_text()
    return [int(p) for p in re.findall(r"(?:listen|server) 127\.0\.0\.1:(\d+)", conf)]


def stop_everything(proc: subprocess.Popen[str], children: set[int]) -> None:
    """Cleanup on any outcome: ask vkit up to stop, then kill whatever is left."""
    children |= descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    kill_all(children)


def start_vkit_up(port: int, run_dir: Path) -> tuple[subprocess.Popen[str], Output]:
    """``vkit up`` with one replica on ``port``, its output collected as it comes."""
    argv = ["--replicas", "1", "--port", str(port), "--run-dir", str(run_dir)]
    return spawn_vkit_up(argv)


def spawn_vkit_up(args: list[str]) -> tuple[subprocess.Popen[str], Output]:
    """``vkit up ARGS``, its output collected as it comes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vkit", "up", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        preexec_fn=_default_sigint,  # the tests' Ctrl-C, even when pytest runs in the background
    )
    return proc, Output(proc)


def _default_sigint() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and an ignored
    signal is inherited: vkit up would never see the Ctrl-C these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_banner(proc: subprocess.Popen[str], output: Output) -> None:
    """Until the banner is printed; fails with the output if it exits or takes too long."""
    wait_for_line(proc, output, "Press Ctrl-C", BANNER_TIMEOUT_S)


def wait_for_line(proc: subprocess.Popen[str], output: Output, text: str, within_s: float) -> None:
    """Until ``text`` is printed; fails with the output if vkit up exits or takes too long."""
    deadline = time.monotonic() + within_s
    while text not in output.text:
        assert proc.poll() is None, f"vkit up exited early:\n{output.text}"
        assert time.monotonic() < deadline, f"no {text!r} within {within_s} s:\n{output.text}"
        time.sleep(0.5)


def test_vkit_up_serves_the_printed_key_and_stops_cleanly(tmp_path: Path) -> None:
    port = pick_free_ports(1)[0]
    run_dir = tmp_path / "run"
    proc, output = start_vkit_up(port, run_dir)
    children: set[int] = set()
    try:
        wait_for_banner(proc, output)
        key = re.search(r"API key:\s+(\S+)", output.text)
        url = re.search(r"URL:\s+(\S+)/v1", output.text)
        assert key and url, output.text
        assert url.group(1) == f"http://127.0.0.1:{port}"
        reply = sdk(url.group(1), key.group(1)).chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens <= 3
        metrics_url = re.search(r"Metrics:\s+(\S+)", output.text)
        assert metrics_url, output.text
        scraped = httpx.get(metrics_url.group(1), timeout=10)
        assert scraped.status_code == 200
        assert "vkit_gateway_requests_total{" in scraped.text
        children |= descendants(proc.pid)
        assert len(children) >= 3  # replica (+ engine), nginx (+ worker), gateway
        ports = [port, *stack_ports(run_dir)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, output.text
        survivors = [pid for pid in children if is_alive(pid)]
    finally:
        stop_everything(proc, children)
    assert "everything stopped" in output.text
    assert survivors == []
    assert [p for p in ports if port_in_use(p)] == []


def test_vkit_up_names_a_replica_that_fails_to_start(tmp_path: Path) -> None:
    port = pick_free_ports(1)[0]
    argv = [sys.executable, "-m", "vkit", "up", "--replicas", "1", "--port", str(port)]
    argv += ["--run-dir", str(tmp_path / "run"), "--model", str(tmp_path / "no-such-model")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1
    assert "vkit up: error: replica-0 exited with code 1" in done.stderr
    assert "last lines of" in done.stderr and "no-such-model" in done.stderr
    assert "everything stopped" in done.stdout
    assert not port_in_use(port)
