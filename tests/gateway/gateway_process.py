"""A real ``vkit gateway`` process for the ledger's process tests: :func:`serving_gateway`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from vkit.stack.ports import free_port


def serving_gateway(
    settings: dict[str, str], timeout_s: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """``vkit gateway`` with ``settings`` (``VKIT_GATEWAY_*`` variables) on a free port, once
    ``/readyz`` answers 200: the process and its base URL. Its stderr is kept for a failure."""
    port = free_port()
    env = {**os.environ, **settings, "VKIT_GATEWAY_PORT": str(port)}
    argv = [sys.executable, "-m", "vkit", "gateway"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            error = proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            raise AssertionError(f"the gateway exited: {error}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    raise AssertionError("the gateway did not become ready")
