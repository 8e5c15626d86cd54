"""Spill-over (gateway.spill): a second stand-in plays the remote endpoint, with its own key.

The remote answers 401 to any Authorization but its own key, and names itself ``remote`` in
its answers, so an answer that came from it says so, and one sent with the client's key (or
the replicas' ``upstream_api_key``) would fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.spill import Spill
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key
from tests.gateway.ledger_stores import a_ledger
from tests.gateway.test_queue_refusal import QUEUE_FULL
from tests.vllm_standin import Script, ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
REMOTE_KEY = "rk-remote-secret"
LOCAL_KEY = "vllm-local-key"
BOB, CAROL = "sk-test-bob", "sk-test-carol"
DAVE = "sk-test-dave"
KEYS = {
    SECRET: Key("alice", spill=True),
    DAVE: Key("dave", spill=True, scheduling_priority=100),  # a batch key
    BOB: Key("bob"),  # never opted in
    CAROL: Key("carol", spill=True, on_premises=True),  # on-premises wins
}


@pytest.fixture
async def remote() -> AsyncIterator[ScriptedUpstream]:
    script = Script(models=["org/tiny-llama"], api_key=REMOTE_KEY, name="remote")
    async with ScriptedUpstream(script) as double:
        yield double


async def spilling_gateway(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    remote: ScriptedUpstream,
    probe_interval: float = 0.1,
    **extra: Any,
) -> ServedGateway:
    upstream.script.api_key = LOCAL_KEY
    gw = await start_gateway(
        keys=KEYS,
        upstream_api_key=LOCAL_KEY,
        spill={
            "url": remote.url,
            "name": "runpod",
            "api_key": REMOTE_KEY,
            "models": {"tiny-llama": "org/tiny-llama"},
            "probe_interval": probe_interval,
        },
        **extra,
    )
    spill = spill_of(gw)
    await wait_until(lambda: spill.remote.probed)
    return gw


def spill_of(gw: ServedGateway) -> Spill:
    spill = gw.app.running.forwarder.spill
    assert spill is not None
    return spill


def spilled(gw: ServedGateway, reason: str) -> float:
    labels = {"backend": "runpod", "reason": reason}
    return gw.metric("vkit_gateway_spilled_requests_total", labels)


def as_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_queue_full_replica_sends_an_opted_in_key_to_the_remote_with_its_own_key(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote)
    upstream.script.statuses = [503] * 3  # every attempt: vLLM's queue is full

    answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)

    assert answer.status_code == 200, answer.text
    assert answer.json()["replica"] == "remote"  # the remote's 401 would show another key
    assert remote.bodies[0]["model"] == "org/tiny-llama"  # renamed on the way out
    assert spilled(gw, "busy") == 1
    tokens = {"backend": "runpod", "key": "alice", "direction": "completion"}
    assert gw.metric("vkit_gateway_spilled_tokens_total", tokens) == 3
    assert gw.limiter.leases[0].settled == [7 + 3]  # billed to the key as any answer


async def test_a_batch_key_refused_at_every_queue_cap_spills_without_its_priority(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote)
    upstream.script.statuses, upstream.script.error_body = [503], QUEUE_FULL  # vLLM's cap

    answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=as_key(DAVE))

    assert answer.status_code == 200, answer.text
    assert upstream.bodies[0]["priority"] == 100  # the replicas run the priority policy
    assert "priority" not in remote.bodies[0]  # the remote's policy is its own (fcfs: 400)
    assert remote.bodies[0]["model"] == "org/tiny-llama"
    assert spilled(gw, "busy") == 1


async def test_every_replica_down_spills_at_once_without_asking_them(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote, hold={"max_wait": 30})
    upstream.script.health_status = 503
    pool = gw.app.running.pool
    await wait_until(lambda: not pool.any_ready)
    asked = len(upstream.bodies)

    stream = {**CHAT, "stream": True}
    answer = await gw.client.post("/v1/chat/completions", json=stream, headers=AUTH)

    assert answer.status_code == 200, answer.text
    assert answer.text.rstrip().endswith("data: [DONE]")
    assert len(upstream.bodies) == asked  # not held, not sent to a replica
    assert spilled(gw, "down") == 1
    readyz = await gw.client.get("/readyz")  # still in its load balancer's rotation
    assert (readyz.status_code, readyz.json()["status"]) == (200, "spilling")


@pytest.mark.parametrize("secret", [BOB, CAROL], ids=["not-opted-in", "on-premises"])
async def test_a_key_that_may_not_spill_gets_the_replicas_503_and_the_remote_sees_nothing(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    remote: ScriptedUpstream,
    secret: str,
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote)
    upstream.script.statuses = [503] * 3

    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=as_key(secret))

    assert refused.status_code == 503
    assert remote.bodies == []
    assert spilled(gw, "busy") == 0


async def test_a_remote_that_stops_answering_is_down_and_sent_nothing(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote)
    assert gw.metric("vkit_gateway_spill_up", {"backend": "runpod"}) == 1
    remote.script.models_status = 500
    spill = spill_of(gw)
    await wait_until(lambda: not spill.remote.ready)
    upstream.script.statuses = [503] * 3

    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)

    assert refused.status_code == 503
    assert remote.bodies == []
    assert gw.metric("vkit_gateway_spill_up", {"backend": "runpod"}) == 0


async def test_a_remote_that_refuses_the_gateways_key_is_a_502_not_the_clients_401(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote, probe_interval=60)
    remote.script.api_key = "rk-rotated"  # since its last probe
    upstream.script.statuses = [503] * 3

    answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)

    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == "the spill-over endpoint runpod refused the gateway"


async def test_a_replica_answering_keeps_every_request_local(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, remote: ScriptedUpstream
) -> None:
    gw = await spilling_gateway(start_gateway, upstream, remote)

    answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)

    assert answer.status_code == 200
    assert "replica" not in answer.json()
    assert remote.bodies == []
    assert upstream.bodies[0]["model"] == "tiny-llama"


async def test_the_ledger_bills_a_spilled_request_under_the_remotes_name(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    remote: ScriptedUpstream,
    tmp_path: Path,
) -> None:
    ledger = a_ledger(f"sqlite:///{tmp_path / 'usage.sqlite3'}", flush=0.05)
    gw = await spilling_gateway(start_gateway, upstream, remote, ledger=ledger)
    assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).is_success
    upstream.script.statuses = [503] * 3
    assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).is_success

    await ledger.flush()
    rows = ledger.store.usage(0, 2**40)
    assert {(r.key, r.backend, r.requests, r.tokens) for r in rows} == {
        ("alice", "local", 1, 10),
        ("alice", "runpod", 1, 10),
    }
