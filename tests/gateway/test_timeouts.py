"""Layered timeouts, client disconnects and retries before the first byte."""

from __future__ import annotations

import asyncio
import json
import socket

from gateway.body import estimate_prompt_tokens
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.gateway.doubles import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_first_byte_in_time_is_504_and_closes_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.head_delay = 5
    gw = await start_gateway(timeouts={"first_byte": 0.3})
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    await wait_until(lambda: upstream.closed_early == 1)
    assert len(upstream.bodies) == 1  # a timeout is not retried


async def test_idle_stream_gets_error_event_then_done(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 10
    upstream.script.stall_after = 2
    gw = await start_gateway(timeouts={"idle": 0.3})
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["type"] == "timeout_error"
    assert events[-1] == "data: [DONE]"
    await wait_until(lambda: upstream.closed_early == 1)
    # two content chunks were relayed: the key is billed for them (no usage chunk came)
    assert gw.limiter.leases[0].settled[0] >= 2
    labels = {"key": "alice", "direction": "completion"}
    assert gw.metric("vkit_gateway_tokens_total", labels) == 2


async def test_total_deadline_cuts_a_slow_stream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 50
    upstream.script.chunk_delay = 0.1
    gw = await start_gateway(timeouts={"total": 0.5, "idle": 5})
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    assert '"timeout_error"' in response.text
    assert response.text.endswith("data: [DONE]\n\n")
    await wait_until(lambda: upstream.closed_early == 1)


async def test_client_disconnect_mid_stream_closes_upstream_and_bills(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 100
    upstream.script.chunk_delay = 0.05
    gw = await start_gateway()
    async with gw.client.stream("POST", "/v1/chat/completions", json=STREAM, headers=AUTH) as r:
        chunks = r.aiter_bytes()
        await anext(chunks)
        await anext(chunks)
    await wait_until(lambda: upstream.closed_early == 1)
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    billed = gw.limiter.leases[0].settled[0]
    # no usage chunk came: the prompt estimate plus the content chunks relayed (>= 2)
    prompt = estimate_prompt_tokens(STREAM)
    assert prompt + 2 <= billed < prompt + 100
    assert gw.metric("vkit_gateway_in_flight_requests") == 0
    labels = {"key": "alice", "model": "tiny-llama", "status": "499"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1


async def test_client_disconnect_before_first_byte_closes_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.head_delay = 5
    gw = await start_gateway()
    task = asyncio.create_task(gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH))
    await wait_until(lambda: len(upstream.bodies) == 1)
    task.cancel()
    await wait_until(lambda: upstream.closed_early == 1)
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))


async def test_connection_failure_is_retried_on_the_next_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    doomed = await ScriptedUpstream().start()
    gw = await start_gateway(upstreams=[doomed.url, upstream.url], health={"interval": 60})
    pool = gw.app.state.forwarder.pool
    await wait_until(lambda: all(u.ready for u in pool.upstreams))
    await doomed.stop()  # still marked ready: the next probe is a minute away
    for _ in range(2):  # round-robin starts on each upstream once
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status_code == 200
    assert len(upstream.bodies) == 2
    labels = {"upstream": doomed.url.removeprefix("http://"), "kind": "connect"}
    assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1


async def test_503_before_the_first_byte_is_retried(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.statuses = [503, 502]
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    assert len(upstream.bodies) == 3


async def test_retries_are_bounded(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.statuses = [503] * 5
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "scripted"
    assert len(upstream.bodies) == 3


async def test_no_upstream_reachable_is_503(start_gateway: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    gw = await start_gateway(upstreams=[dead])
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert gw.limiter.leases[0].settled == [0]


async def test_upstream_dropping_mid_stream_ends_with_an_error_event(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 10
    upstream.script.break_after = 3
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) == 5
    assert json.loads(events[-2].removeprefix("data: "))["error"]["type"] == "upstream_error"
    assert events[-1] == "data: [DONE]"
    labels = {"upstream": upstream.url.removeprefix("http://"), "kind": "stream"}
    assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1
    assert gw.metric("vkit_gateway_tokens_total", {"key": "alice", "direction": "completion"}) == 3
