"""Issue 13, scale to zero, on the real local stack: a gateway with ``hold`` on and no
ready replica takes a request and holds it; the replica starts and becomes ready; the
request is served. The replica is one of the session's two, killed first and left
running again at the end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.clients import sdk, wait_for
from tests.e2e.conftest import ADMIN_URLS, MODEL, STARTUP_S, KeyFactory, metrics_text
from tests.e2e.prom import sample_sum
from vkit.stack.ports import pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec
from vkit.stack.up_settings import UpSettings

pytestmark = pytest.mark.engine

# Longer than a CPU replica takes to start (70-110 s, docs/cpu-engine.md#start-up-time).
HOLD_S = 400.0
RESTART_S = 300.0


def start_holding_gateway(
    stack_dir: Path, ports: StackPorts, processes: ProcessGroup, replica_port: int
) -> str:
    """A gateway in front of one replica only, holding requests while it is not ready."""
    port, admin_port = pick_free_ports(2)
    gw_ports = dataclasses.replace(
        ports, gateway=port, redis=None, gateway_admin=admin_port, replicas=(replica_port,)
    )
    spec = gateway_spec(
        UpSettings(routing="aware"), StackLayout(stack_dir), gw_ports, sys.executable
    )
    env = {
        **spec.env,
        "VKIT_GATEWAY_HOLD__MAX_WAIT": str(HOLD_S),
        "VKIT_GATEWAY_HOLD__PROBE_INTERVAL": "0.5",
        "VKIT_GATEWAY_TIMEOUTS__TOTAL": str(HOLD_S + 60),
    }
    name = "gateway-holding"
    spec = dataclasses.replace(
        spec, name=name, log_path=stack_dir / "logs" / f"{name}.log", env=env
    )
    processes.wait_ready([processes.start(spec)], STARTUP_S)
    url = f"http://127.0.0.1:{port}"
    ADMIN_URLS[url] = f"http://127.0.0.1:{admin_port}"
    return url


def test_a_request_held_while_no_replica_is_ready_is_served_once_one_is(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    new_key: KeyFactory,
    vllm_replicas: list[Any],
) -> None:
    replica = vllm_replicas[-1]
    replica.kill()  # scaled to zero: the gateway's only replica is gone
    try:
        gateway = start_holding_gateway(stack_dir, ports, processes, replica.port)
        readyz = httpx.get(f"{gateway}/readyz", timeout=5)
        assert (readyz.status_code, readyz.json()["status"]) == (200, "holding")
        client = sdk(gateway, new_key(gateway).secret, timeout=HOLD_S + 60)
        with ThreadPoolExecutor(max_workers=1) as pool:
            sent = time.monotonic()
            held = pool.submit(
                lambda: client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Tell me a short story about a GPU."}],
                    max_tokens=4,
                )
            )
            wait_for(
                lambda: sample_sum(metrics_text(gateway), "vkit_gateway_held_requests") == 1,
                30,
                "the request to be held",
            )
            time.sleep(3)
            assert not held.done()  # still waiting: nothing to serve it
            replica.start()
            replica.wait_ready(RESTART_S)
            answer = held.result(timeout=60)
            waited = time.monotonic() - sent
        assert answer.choices and answer.usage is not None
        assert answer.usage.completion_tokens == 4
        text = metrics_text(gateway)
        assert sample_sum(text, "vkit_gateway_held_requests") == 0
        assert sample_sum(text, "vkit_gateway_hold_seconds_count") == 1
        assert sample_sum(text, "vkit_gateway_hold_seconds_sum") > 3
        assert waited > 3
        assert sample_sum(text, "vkit_gateway_hold_refused_total") == 0
    finally:
        if not replica.running:
            replica.start()
        replica.wait_ready(RESTART_S)
