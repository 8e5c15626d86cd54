"""Issue 12 on real replicas: the gateway's aware router (``routing: aware``) in front of
the session's two vLLM CPU replicas, no NGINX.

- requests sharing a long system prompt all land on one replica, and that replica's
  prefix cache hits (``vllm:prefix_cache_hits_total``, vLLM 0.32) rise while the other's
  do not;
- a SIGKILLed replica's traffic moves to the other: every request sent after the kill
  succeeds there (a stream already under way on the killed one may break: it was
  started, and nothing is resent once it may have been).

The killed replica is started again, and the test waits until it is back in the aware
gateway's rotation, so the tests after it find the stack whole.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.clients import replica_sum, sdk, wait_for
from tests.e2e.conftest import ADMIN_URLS, MODEL, STARTUP_S, KeyFactory, metrics_text
from tests.e2e.prom import sample_sum
from vkit.stack.ports import pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec
from vkit.stack.up_settings import UpSettings

pytestmark = pytest.mark.engine

RESTART_S = 300.0
# Two tenants' system prompts, long enough to fill several KV blocks of the tiny model.
SYSTEM = {
    name: f"You are the support assistant of {name}. Answer in one short line. " * 30
    for name in ("tenant-alpha", "tenant-beta")
}
SUCCESS = "vllm:request_success_total"
HITS = "vllm:prefix_cache_hits_total"


@pytest.fixture(scope="module")
def aware_gateway(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    keys_file: Path,
    started_gateways: list[str],
) -> str:
    """A gateway whose upstreams are the replicas themselves, routing aware."""
    port, admin_port = pick_free_ports(2)
    gw_ports = dataclasses.replace(ports, gateway=port, redis=None, gateway_admin=admin_port)
    spec = gateway_spec(
        UpSettings(routing="aware"), StackLayout(stack_dir), gw_ports, sys.executable
    )
    env = {
        **spec.env,
        "VKIT_GATEWAY_HEALTH__INTERVAL": "0.5",
        "VKIT_GATEWAY_ROUTER__SCRAPE_INTERVAL": "0.5",
    }
    name = "gateway-aware"
    spec = dataclasses.replace(
        spec, name=name, log_path=stack_dir / "logs" / f"{name}.log", env=env
    )
    processes.wait_ready([processes.start(spec)], STARTUP_S)
    url = f"http://127.0.0.1:{port}"
    started_gateways.append(url)
    ADMIN_URLS[url] = f"http://127.0.0.1:{admin_port}"
    return url


def chat(client: Any, tenant: str, turn: int, *, stream: bool = False) -> Any:
    messages = [
        {"role": "system", "content": SYSTEM[tenant]},
        {"role": "user", "content": f"Question number {turn}?"},
    ]
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=stream
    )


def served(replicas: list[Any], before: list[float]) -> list[float]:
    return [a - b for a, b in zip(replica_sum(replicas, SUCCESS), before, strict=True)]


def test_a_shared_prefix_lands_on_one_replica_and_hits_its_prefix_cache(
    aware_gateway: str, new_key: KeyFactory, vllm_replicas: list[Any]
) -> None:
    client = sdk(aware_gateway, new_key(aware_gateway).secret)
    requests_before = replica_sum(vllm_replicas, SUCCESS)
    hits_before = replica_sum(vllm_replicas, HITS)
    for turn in range(6):
        chat(client, "tenant-alpha", turn)
    shares = served(vllm_replicas, requests_before)
    assert sorted(shares) == [0, 6], shares
    owner = shares.index(6)
    hits = [a - b for a, b in zip(replica_sum(vllm_replicas, HITS), hits_before, strict=True)]
    assert hits[owner] > 0, hits  # turns 2..6 reuse the system prompt's blocks
    assert hits[1 - owner] == 0, hits
    decisions = metrics_text(aware_gateway)
    assert sample_sum(decisions, "vkit_gateway_routing_decisions_total", reason="affinity") >= 6


class StreamingLoad:
    """Clients streaming chats of both tenants back to back; records each request as
    (sent_at, chunks received, error or "")."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.results: list[tuple[float, int, str]] = []
        self.stop = threading.Event()

    def run(self, tenant: str) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            sent, chunks = time.monotonic(), 0
            try:
                for _ in chat(self.client, tenant, turn, stream=True):
                    chunks += 1
                self.results.append((sent, chunks, ""))
            except Exception as exc:  # recorded, asserted on by the test
                self.results.append((sent, chunks, repr(exc)))

    def done_after(self, moment: float) -> int:
        return sum(1 for r in list(self.results) if r[0] > moment)


def owner_of(client: Any, tenant: str, replicas: list[Any]) -> int:
    before = replica_sum(replicas, SUCCESS)
    chat(client, tenant, 0)
    return served(replicas, before).index(1)


def in_rotation(gateway: str, replica: Any) -> bool:
    states = httpx.get(f"{ADMIN_URLS[gateway]}/readyz", timeout=5).json()["upstreams"]
    return bool(states.get(f"127.0.0.1:{replica.port}"))


def test_a_killed_replicas_traffic_moves_and_no_later_request_fails(
    aware_gateway: str, new_key: KeyFactory, vllm_replicas: list[Any]
) -> None:
    client = sdk(aware_gateway, new_key(aware_gateway, concurrency=8).secret, timeout=60)
    victim_index = owner_of(client, "tenant-alpha", vllm_replicas)
    victim, survivor = vllm_replicas[victim_index], vllm_replicas[1 - victim_index]
    load = StreamingLoad(client)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = [pool.submit(load.run, tenant) for tenant in SYSTEM]
            try:
                wait_for(lambda: len(load.results) >= 4, 60, "streams before the kill")
                survivor_before = replica_sum([survivor], SUCCESS)[0]
                victim.kill()
                killed_at = time.monotonic()
                wait_for(lambda: load.done_after(killed_at) >= 6, 90, "streams after the kill")
            finally:
                load.stop.set()
            for future in running:
                future.result(timeout=90)
        after = [r for r in load.results if r[0] > killed_at]
        assert [r[2] for r in after if r[2]] == []
        assert all(chunks > 1 for _, chunks, _ in after)
        assert replica_sum([survivor], SUCCESS)[0] - survivor_before >= len(after)
        assert not in_rotation(aware_gateway, victim)
    finally:
        if not victim.running:
            victim.start()
        victim.wait_ready(RESTART_S)
        wait_for(lambda: in_rotation(aware_gateway, victim), 30, "the replica back in rotation")
