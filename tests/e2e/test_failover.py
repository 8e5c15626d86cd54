"""Issue 4, items 7 and 10 (second half): replicas die and come back.

Ordered last among the E2E tests (see conftest): it kills the session's replicas and
leaves them restarted and ready.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.clients import replica_sum, sdk, wait_for
from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.engine

RESTART_S = 300.0


class SteadyLoad:
    """One client sending small completions back to back; records (sent_at, ok)."""

    def __init__(self, gateway: str, secret: str) -> None:
        self.client = sdk(gateway, secret, timeout=30)
        self.results: list[tuple[float, bool, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                self.client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
                self.results.append((sent, True, ""))
            except Exception as exc:  # recorded, asserted on by the test
                self.results.append((sent, False, repr(exc)))


def readyz(gateway: str) -> int:
    return httpx.get(f"{gateway}/readyz", timeout=5).status_code


def send_under_load_and_kill(gateway: str, secret: str, victim: Any) -> list[str]:
    """Errors of the requests sent after SIGKILLing ``victim`` under steady load."""
    load = SteadyLoad(gateway, secret)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(load.run)
        time.sleep(2)
        killed_at = time.monotonic()
        victim.kill()
        time.sleep(5)
        load.stop.set()
        running.result(timeout=60)
    after_kill = [r for r in load.results if r[0] > killed_at]
    assert len(after_kill) >= 3, "the load kept going after the kill"
    return [r[2] for r in after_kill if not r[1]]


def test_failover_readiness_and_rejoin(
    gateway: str, secrets: dict[str, str], vllm_replicas: list[Any]
) -> None:
    """One kill/restart cycle (restarts take minutes on CPU) for items 7 and 10."""
    victim, other = vllm_replicas
    wait_for(lambda: readyz(gateway) == 200, 10, "/readyz 200 with both replicas up")
    try:
        assert send_under_load_and_kill(gateway, secrets["failover"], victim) == []
        other.kill()
        wait_for(lambda: readyz(gateway) == 503, 15, "/readyz 503 with every replica down")
    finally:
        victim.start()
        other.start()
        victim.wait_ready(RESTART_S)
        wait_for(lambda: readyz(gateway) == 200, 15, "/readyz 200 once a replica is back")
        other.wait_ready(RESTART_S)

    before = replica_sum([victim], "vllm:request_success_total")[0]
    client = sdk(gateway, secrets["failover"])

    def victim_served() -> bool:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        return replica_sum([victim], "vllm:request_success_total")[0] > before

    wait_for(victim_served, 30, "the restarted replica to take traffic")
