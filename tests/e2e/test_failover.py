"""Issue 4, items 7 and 10 (second half): replicas die and come back.

It kills the session's replicas and, whatever happens, restarts them and waits until
they are back in NGINX's rotation and every started gateway is ready again, so the tests
after it (in any order) find the stack as they would have without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.clients import replica_sum, sdk, wait_for
from tests.e2e.conftest import MODEL, KeyFactory

pytestmark = pytest.mark.engine

RESTART_S = 300.0
BEFORE_KILL = 3  # successful requests before the kill: the load is flowing through both
AFTER_KILL = 3  # completed requests sent after the kill
LOAD_S = 60.0  # deadline for either count (a request takes well under a second)
# NGINX skips a replica it saw fail for fail_timeout (5 s) before it tries it again.
REJOIN_S = 30.0


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

    def count(self, keep: Callable[[tuple[float, bool, str]], bool]) -> int:
        """Results so far that ``keep`` keeps (a copy: the load thread appends meanwhile)."""
        return sum(1 for result in list(self.results) if keep(result))


def readyz(gateway: str) -> int:
    return httpx.get(f"{gateway}/readyz", timeout=5).status_code


def send_under_load_and_kill(gateway: str, secret: str, victim: Any) -> list[str]:
    """Errors of the requests sent after ``victim`` was SIGKILLed (and gone), under load."""
    load = SteadyLoad(gateway, secret)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(load.run)
        try:
            wait_for(
                lambda: load.count(lambda r: r[1]) >= BEFORE_KILL or running.done(),
                LOAD_S,
                f"{BEFORE_KILL} successful requests before the kill",
            )
            # From when the replica is gone (kill() returns once it is reaped and its port is
            # free): a request in flight while it dies gets a 502 by design -- neither NGINX
            # nor the gateway resends a POST that vLLM may have started -- but every request
            # sent after that must succeed on the other replica.
            victim.kill()
            killed_at = time.monotonic()
            wait_for(
                lambda: load.count(lambda r: r[0] > killed_at) >= AFTER_KILL or running.done(),
                LOAD_S,
                f"{AFTER_KILL} requests sent after the kill to complete",
            )
        finally:
            load.stop.set()
        running.result(timeout=60)
    after_kill = [r for r in load.results if r[0] > killed_at]
    assert len(after_kill) >= 3, "the load kept going after the kill"
    return [r[2] for r in after_kill if not r[1]]


def served_by_each(gateway: str, secret: str, replicas: list[Any]) -> Callable[[], bool]:
    """A predicate for :func:`wait_for`: one request per call through ``gateway``; true once
    every replica has served one of them (NGINX sends it traffic again)."""
    client = sdk(gateway, secret)
    before = replica_sum(replicas, "vllm:request_success_total")

    def each_served() -> bool:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        after = replica_sum(replicas, "vllm:request_success_total")
        return all(a > b for a, b in zip(after, before, strict=True))

    return each_served


def restore(gateway: str, secret: str, replicas: list[Any], gateways: list[str]) -> None:
    """Leave the stack as a test that runs next expects it: both replicas in NGINX's
    rotation (it skips one that failed for fail_timeout) and every started gateway ready
    (each marks its upstream down while nothing answered)."""
    wait_for(served_by_each(gateway, secret, replicas), REJOIN_S, "both replicas to take traffic")
    wait_for(
        lambda: all(readyz(started) == 200 for started in gateways),
        15,
        "/readyz 200 again on every started gateway",
    )


def test_failover_readiness_and_rejoin(
    gateway: str,
    new_key: KeyFactory,
    vllm_replicas: list[Any],
    started_gateways: list[str],
) -> None:
    """One kill/restart cycle (restarts take minutes on CPU) for items 7 and 10."""
    secret = new_key(gateway, concurrency=8).secret
    victim, other = vllm_replicas
    wait_for(lambda: readyz(gateway) == 200, 10, "/readyz 200 with both replicas up")
    try:
        assert send_under_load_and_kill(gateway, secret, victim) == []
        other.kill()
        wait_for(lambda: readyz(gateway) == 503, 15, "/readyz 503 with every replica down")
    finally:
        for replica in (victim, other):
            if not replica.running:
                replica.start()
        victim.wait_ready(RESTART_S)
        wait_for(lambda: readyz(gateway) == 200, 15, "/readyz 200 once a replica is back")
        other.wait_ready(RESTART_S)
        restore(gateway, secret, vllm_replicas, started_gateways)

    before = replica_sum([victim], "vllm:request_success_total")[0]
    client = sdk(gateway, secret)

    def victim_served() -> bool:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        return replica_sum([victim], "vllm:request_success_total")[0] > before

    wait_for(victim_served, 30, "the restarted replica to take traffic")
