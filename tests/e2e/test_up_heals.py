"""``vkit up`` heals: a replica killed outright comes back by itself, and meanwhile the
gateway says 503 with ``Retry-After`` -- on ``/readyz`` and on requests -- instead of
dying with it. Nothing in the test touches the stack between the kill and the recovery.

Its own ``vkit up --replicas 1`` (own run dir, free ports), as in ``test_up.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.test_up import (
    Output,
    start_vkit_up,
    stop_everything,
    wait_for_banner,
    wait_for_line,
)
from vkit.stack.ports import pick_free_ports
from vkit.stack.proctree import descendants

pytestmark = pytest.mark.engine

NOT_READY_WITHIN_S = 60.0  # the gateway probes every 5 s; NGINX fails over in 5 s
BACK_WITHIN_S = 360.0  # backoff (1 s) + a fresh engine start on 2 shared CPUs
READY_LINE_WITHIN_S = 30.0  # vkit up's own look at a starting replica, after the gateway's


def replica_tree(up_pid: int) -> list[psutil.Process]:
    """The ``vkit launch`` of replica-0 and everything below it."""
    for pid in descendants(up_pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            if "launch" in process.cmdline() and process.parent().pid == up_pid:
                return [process, *process.children(recursive=True)]
    raise AssertionError("no replica (vkit launch) under vkit up")


def wait_status(url: str, status: int, within_s: float, output: Output) -> httpx.Response:
    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0)
            if response.status_code == status:
                return response
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} not {status} within {within_s} s (last: {last}):\n{output.text}")


def test_killed_replica_is_restarted_while_the_gateway_answers_503(tmp_path: Path) -> None:
    port = pick_free_ports(1)[0]
    proc, output = start_vkit_up(port, tmp_path / "run")
    children: set[int] = set()
    try:
        wait_for_banner(proc, output)
        key = re.search(r"API key:\s+(\S+)", output.text)
        assert key, output.text
        url = f"http://127.0.0.1:{port}"
        chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}]}
        auth = {"authorization": f"Bearer {key.group(1)}"}

        def ask() -> httpx.Response:
            body = {**chat, "max_tokens": 3}
            return httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)

        assert ask().status_code == 200
        children |= descendants(proc.pid)

        tree = replica_tree(proc.pid)
        for process in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        psutil.wait_procs(tree, timeout=30)
        killed_at = time.monotonic()

        readyz = wait_status(f"{url}/readyz", 503, NOT_READY_WITHIN_S, output)
        assert int(readyz.headers["retry-after"]) >= 1
        refused = ask()
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "upstream_unavailable"
        assert proc.poll() is None, f"vkit up stopped with its replica:\n{output.text}"
        assert re.search(r"replica-0 exited \(killed by SIGKILL\); restarting in \d", output.text)

        refused_at = time.monotonic()
        wait_status(f"{url}/readyz", 200, BACK_WITHIN_S, output)
        assert ask().status_code == 200
        print(  # measured numbers, shown with -s
            f"503 + Retry-After {refused_at - killed_at:.1f} s after the kill; 200 again "
            f"{time.monotonic() - killed_at:.1f} s after it"
        )
        # vkit up looks at its replicas on its own beat, not the gateway's: the line may
        # come a moment after the gateway's own probe found the replica ready.
        wait_for_line(proc, output, "replica-0 is ready again", READY_LINE_WITHIN_S)
        children |= descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, output.text
    finally:
        stop_everything(proc, children)
