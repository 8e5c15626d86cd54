"""Holding requests while no upstream is ready (``hold``), in both routing modes: a held
request is served once an upstream is ready; past the deadline or the queue bound, 503 +
``Retry-After``; ``/readyz`` says ``holding``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def down_gateway(
    start: GatewayFactory, upstream: ScriptedUpstream, routing: str, **hold: Any
) -> ServedGateway:
    upstream.script.health_status = 503  # probed, not ready: scaled to zero, or starting
    gw = await start(
        routing=routing,
        health={"interval": 5.0, "timeout": 1.0},
        hold={"probe_interval": 0.05, **hold},
    )
    assert not gw.app.running.pool.any_ready
    return gw


def post(gw: ServedGateway) -> Any:
    return gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
async def test_a_held_request_is_served_once_an_upstream_is_ready(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, routing: str
) -> None:
    gw = await down_gateway(start_gateway, upstream, routing, max_wait=10)
    ready = await gw.client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "holding")
    held = asyncio.create_task(post(gw))
    await wait_until(lambda: gw.metric("vkit_gateway_held_requests") == 1)
    await asyncio.sleep(0.3)
    assert not held.done() and upstream.finished == 0
    # The prober looks every probe_interval while requests wait (health.interval is 5 s).
    upstream.script.health_status = 200
    answer = await asyncio.wait_for(held, 3)
    assert answer.status_code == 200, answer.text
    assert gw.metric("vkit_gateway_held_requests") == 0
    assert gw.metric("vkit_gateway_hold_seconds_count") == 1
    assert gw.metric("vkit_gateway_hold_seconds_sum") >= 0.3


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
async def test_past_the_deadline_a_held_request_is_503_with_retry_after(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, routing: str
) -> None:
    gw = await down_gateway(start_gateway, upstream, routing, max_wait=0.4)
    refused = await post(gw)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "hold_timeout"
    assert int(refused.headers["retry-after"]) >= 1
    assert gw.metric("vkit_gateway_hold_refused_total", {"reason": "deadline"}) == 1
    assert gw.metric("vkit_gateway_hold_seconds_sum") >= 0.4


async def test_past_the_queue_bound_a_request_is_refused_at_once(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await down_gateway(start_gateway, upstream, "round_robin", max_wait=10, max_queued=1)
    first = asyncio.create_task(post(gw))
    await wait_until(lambda: gw.metric("vkit_gateway_held_requests") == 1)
    refused = await post(gw)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "hold_queue_full"
    assert gw.metric("vkit_gateway_hold_refused_total", {"reason": "queue_full"}) == 1
    upstream.script.health_status = 200
    assert (await asyncio.wait_for(first, 3)).status_code == 200


async def test_without_hold_no_ready_upstream_is_503_at_once(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.health_status = 503
    gw = await start_gateway()
    refused = await post(gw)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    assert (await gw.client.get("/readyz")).status_code == 503
    assert gw.metric("vkit_gateway_hold_seconds_count") == 0
