"""Non-streaming and streaming relay, usage accounting, caps and settlement."""

from __future__ import annotations

import json

from tests.gateway.conftest import AUTH, GatewayFactory
from tests.gateway.doubles import Key
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello there"}]}


def sse_events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]


async def test_non_streaming_passes_the_answer_through(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["message"]["content"] == "tok " * 4
    lease = gw.limiter.leases[0]
    assert lease.settled == [upstream.script.prompt_tokens + 4]
    assert gw.metric("vkit_gateway_tokens_total", {"key": "alice", "direction": "completion"}) == 4
    labels = {"key": "alice", "model": "tiny-llama", "status": "200"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1


async def test_max_tokens_is_injected_and_reserved(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(caps={"default_max_tokens": 3})
    await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert upstream.bodies[-1]["max_tokens"] == 3
    assert gw.limiter.leases[0].reserved > 3


async def test_max_tokens_above_the_key_cap_is_clamped(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(keys={"k": Key("bob", max_tokens=2)})
    body = {**CHAT, "max_completion_tokens": 50}
    response = await gw.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    )
    assert response.status_code == 200
    assert upstream.bodies[-1]["max_completion_tokens"] == 2


async def test_max_tokens_above_the_cap_is_refused_when_configured(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(caps={"max_tokens": 10, "over_cap": "reject"})
    body = {**CHAT, "max_tokens": 11}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    assert upstream.bodies == []


async def test_unchanged_body_is_forwarded_byte_for_byte(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    raw = b'{"model": "tiny-llama", "prompt": "hi",  "max_tokens": 2, "seed": 5}'
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post("/v1/completions", content=raw, headers=headers)
    assert response.status_code == 200
    assert upstream.bodies[-1] == json.loads(raw)


async def test_stream_drops_the_usage_chunk_the_client_did_not_ask_for(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    body = {**CHAT, "stream": True}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    options = {"include_usage": True, "continuous_usage_stats": True}
    assert upstream.bodies[-1]["stream_options"] == options
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events)
    assert len(events) == 5
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 4]


async def test_stream_keeps_the_usage_chunk_when_asked(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    usage = json.loads(sse_events(response.text)[-2])["usage"]
    assert usage["completion_tokens"] == 4
    ttft = gw.metric("vkit_gateway_time_to_first_token_seconds_count", {"model": "tiny-llama"})
    assert ttft == 1


async def test_stream_chunks_arrive_before_the_stream_ends(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 3
    upstream.script.chunk_delay = 0.2
    gw = await start_gateway()
    body = {**CHAT, "stream": True}
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        chunks = r.aiter_bytes()
        first = await anext(chunks)
        assert b"t0" in first
        assert upstream.finished == 0
        rest = b"".join([chunk async for chunk in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_embeddings_are_forwarded_without_a_cap(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    body = {"model": "tiny-llama", "input": "abc"}
    response = await gw.client.post("/v1/embeddings", json=body, headers=AUTH)
    assert response.status_code == 200
    assert "max_tokens" not in upstream.bodies[-1]
    assert gw.limiter.leases[0].settled == [3]
