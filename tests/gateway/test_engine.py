"""The gateway in front of two real vLLM CPU replicas (slow tier: ``-m engine``).

What an in-process upstream cannot show: vLLM's real usage numbers are what the key is
charged, the usage chunk the gateway adds is dropped again, and a client that goes away
mid-stream makes the gateway close its upstream connection so that vLLM aborts the request
(docs/vllm-server.md#client-disconnects-and-aborts: it stops generating only when the connection
closes).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.engine import MAX_MODEL_LEN
from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until

pytestmark = pytest.mark.engine

MODEL = "tiny-llama"


def vllm_sample_sum(metrics_text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text page."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def replicas_sum(replicas: list[Any], name: str) -> float:
    pages = await asyncio.gather(*(asyncio.to_thread(r.metrics_text) for r in replicas))
    return sum(vllm_sample_sum(page, name) for page in pages)


async def settled_sum(
    replicas: list[Any], name: str, *, quiet_s: float = 0.5, timeout: float = 10.0
) -> float:
    """``name`` summed over ``replicas`` once two reads ``quiet_s`` apart agree.

    A request that just left ``num_requests_running`` may still have tokens on their way
    into ``generation_tokens_total``; the counter standing still says they have arrived.
    """
    async with asyncio.timeout(timeout):
        last = await replicas_sum(replicas, name)
        while True:
            await asyncio.sleep(quiet_s)  # the interval between two reads, not a wait for it
            now = await replicas_sum(replicas, name)
            if now == last:
                return now
            last = now


async def gateway_for(replicas: list[Any], start_gateway: GatewayFactory) -> ServedGateway:
    gw = await start_gateway(
        upstreams=[r.base_url for r in replicas],
        health={"interval": 0.5, "expected_models": [MODEL]},
    )
    await wait_until(lambda: gw.app.running.pool.any_ready, timeout=10)
    return gw


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Tell me a story."}]
    return {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        **extra,
    }


async def test_real_usage_is_what_the_key_is_charged(
    vllm_replicas: list[Any], start_gateway: GatewayFactory
) -> None:
    gw = await gateway_for(vllm_replicas, start_gateway)
    response = await gw.client.post("/v1/chat/completions", json=chat(5), headers=AUTH)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 5
    assert gw.limiter.leases[0].settled == [usage["total_tokens"]]


async def test_stream_usage_is_metered_and_dropped(
    vllm_replicas: list[Any], start_gateway: GatewayFactory
) -> None:
    gw = await gateway_for(vllm_replicas, start_gateway)
    body = chat(6, stream=True)
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert all('"usage"' not in e or json.loads(e).get("usage") is None for e in events[:-1])
    labels = {"key": "alice", "direction": "completion"}
    # The stream's end goes to the client with its last event; the gateway then reads the
    # upstream's end (to keep the connection) and only then settles: on a starved machine
    # that read came after this line (0 billed yet). Wait for the settle, then exactly 6.
    await wait_until(lambda: gw.metric("vkit_gateway_tokens_total", labels) > 0, timeout=60)
    assert gw.metric("vkit_gateway_tokens_total", labels) == 6


async def test_client_disconnect_aborts_the_vllm_request(
    vllm_replicas: list[Any], start_gateway: GatewayFactory
) -> None:
    gw = await gateway_for(vllm_replicas, start_gateway)
    probe = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    prompt_tokens = (await gw.client.post("/v1/completions", json=probe, headers=AUTH)).json()[
        "usage"
    ]["prompt_tokens"]
    room = MAX_MODEL_LEN - prompt_tokens - 1
    assert room >= 150
    generated_before = await replicas_sum(vllm_replicas, "vllm:generation_tokens_total")
    body = {**probe, "max_tokens": room, "ignore_eos": True, "stream": True}
    async with gw.client.stream("POST", "/v1/completions", json=body, headers=AUTH) as r:
        received = b""
        async for chunk in r.aiter_bytes():
            received += chunk
            if received.count(b"data: ") >= 3:
                break
        assert r.status_code == 200, received
        assert b"[DONE]" not in received
    async with asyncio.timeout(10):
        while await replicas_sum(vllm_replicas, "vllm:num_requests_running") > 0:
            await asyncio.sleep(0.2)
    generated = await settled_sum(vllm_replicas, "vllm:generation_tokens_total")
    assert generated - generated_before < room / 2  # aborted, not run to the end
    await wait_until(lambda: bool(gw.limiter.leases[-1].settled))
    assert gw.limiter.leases[-1].settled[0] < prompt_tokens + room  # billed what was relayed
    labels = {"key": "alice", "model": MODEL, "status": "499"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1
