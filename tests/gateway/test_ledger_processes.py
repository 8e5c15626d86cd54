"""Two ``vkit gateway`` processes on one PostgreSQL ledger enforce one monthly budget (tier
``integration``): each process has its own book, connection and flush loop, and they agree
only through the database, as two pods or two hosts do.

The overshoot stated in docs/usage-ledger.md: once the key's tokens reach the budget, both
gateways refuse it within ``flush_interval`` + ``budget_refresh`` (+ the write's own time),
plus the requests in flight then.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.keyfile import add_key
from tests.gateway.gateway_process import serving_gateway
from tests.gateway.ledger_stores import overshoot_and_bound
from tests.gateway.postgres_process import PostgresProcess, fresh_database
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread

pytestmark = pytest.mark.integration

FLUSH_S = REFRESH_S = 0.1
WRITE_S = 0.3  # the write and read's own time on a loaded machine
BUDGET = 2000
BODY = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with standin_in_thread(Script(chunk_delay=0.0)) as running:
        yield running


def ledger_gateway(
    keys: Path, ledger_url: str, upstream_url: str
) -> tuple[subprocess.Popen[bytes], str]:
    return serving_gateway(
        {
            "VKIT_GATEWAY_UPSTREAMS": upstream_url,
            "VKIT_GATEWAY_KEYS_FILE": str(keys),
            "VKIT_GATEWAY_HEALTH__INTERVAL": "0.2",
            "VKIT_GATEWAY_LEDGER__ENABLED": "true",
            "VKIT_GATEWAY_LEDGER__URL": ledger_url,
            "VKIT_GATEWAY_LEDGER__FLUSH_INTERVAL": str(FLUSH_S),
            "VKIT_GATEWAY_LEDGER__BUDGET_REFRESH": str(REFRESH_S),
        }
    )


def test_two_gateway_processes_stop_a_key_within_the_stated_overshoot(
    postgres_server: PostgresProcess, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    url = fresh_database(postgres_server, "two_processes")
    keys = tmp_path / "keys.yaml"
    secret = add_key(keys, "alice", budgets={"month": {"tokens": BUDGET}})
    gateways: list[tuple[subprocess.Popen[bytes], str]] = []
    served: list[tuple[float, int]] = []  # (when answered, tokens), every 200
    refused: list[str] = []
    lock = threading.Lock()

    def client(base: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                answer = http.post("/v1/chat/completions", json=BODY, headers=headers)
                with lock:
                    if answer.status_code == 429:
                        refused.append(answer.json()["error"]["code"])
                        return
                    assert answer.status_code == 200, answer.text
                    served.append((time.monotonic(), answer.json()["usage"]["total_tokens"]))

    try:
        gateways += [ledger_gateway(keys, url, upstream.url) for _ in range(2)]
        clients = [threading.Thread(target=client, args=(base,)) for _, base in gateways * 2]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=90)
    finally:
        for proc, _ in gateways:
            proc.terminate()
        for proc, _ in gateways:
            proc.communicate(timeout=30)
    assert refused == ["budget_exceeded"] * 4  # every client, on both gateways
    window_s = FLUSH_S + REFRESH_S + WRITE_S
    overshoot, bound = overshoot_and_bound(served, BUDGET, window_s, clients=4)
    total = BUDGET + overshoot
    print(f"budget {BUDGET}, served {total}, overshoot {overshoot} tokens (bound {bound})")
    assert overshoot <= bound, (overshoot, bound)
