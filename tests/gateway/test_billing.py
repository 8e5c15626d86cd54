"""What a key is billed: the upstream's own usage, read exactly, on every path.

Streams ask vLLM for usage on every chunk (``continuous_usage_stats``), so a stream cut
by the client or a timeout bills the tokens generated so far; the per-chunk usage is
stripped again unless the client asked for it. Non-streaming answers are billed from their
top-level ``usage``; an answer without one bills the reservation and is counted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.body import estimate_prompt_tokens
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.vllm_standin import ScriptedUpstream

MODEL = "tiny-llama"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
STREAM = {**CHAT, "stream": True, "max_tokens": 100}
COMPLETION_TOKENS = {"key": "alice", "direction": "completion"}
PROMPT_TOKENS = {"key": "alice", "direction": "prompt"}


def sse_payloads(text: str) -> list[Any]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_a_cut_stream_bills_the_tokens_the_upstream_reported(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.continuous_usage = True
    upstream.script.tokens_per_chunk = 4  # as vLLM with stream_interval=4: 4 tokens a chunk
    upstream.script.chunks = 10
    upstream.script.stall_after = 3
    gw = await start_gateway(timeouts={"idle": 0.3})
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    assert response.status_code == 200
    sent = upstream.bodies[-1]["stream_options"]
    assert sent == {"include_usage": True, "continuous_usage_stats": True}
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    # three chunks of four tokens each, and the prompt as the upstream counted it
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 12]
    assert gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS) == 12
    assert gw.metric("vkit_gateway_tokens_total", PROMPT_TOKENS) == upstream.script.prompt_tokens


async def test_a_client_disconnect_bills_the_tokens_the_upstream_reported(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.continuous_usage = True
    upstream.script.tokens_per_chunk = 3
    upstream.script.chunks = 100
    upstream.script.stall_after = 4  # four chunks, then nothing more: the client gives up
    gw = await start_gateway()
    async with gw.client.stream("POST", "/v1/chat/completions", json=STREAM, headers=AUTH) as r:
        received = b""
        async for chunk in r.aiter_bytes():
            received += chunk
            if received.count(b"data: ") >= 4:
                break
    await wait_until(lambda: upstream.closed_early == 1)
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 12]
    labels = {"key": "alice", "model": MODEL, "status": "499"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1


async def test_per_chunk_usage_is_stripped_when_the_client_did_not_ask(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.continuous_usage = True
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    assert upstream.bodies[-1]["stream_options"]["continuous_usage_stats"] is True
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len(chunks) == upstream.script.chunks
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks), chunks
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 4]


async def test_the_final_usage_chunk_stays_when_only_it_was_asked_for(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.continuous_usage = True
    gw = await start_gateway()
    body = {**STREAM, "stream_options": {"include_usage": True}}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert upstream.bodies[-1]["stream_options"]["continuous_usage_stats"] is True
    *chunks, final, done = sse_payloads(response.text)
    assert done == "[DONE]"
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 4
    assert all("usage" not in chunk for chunk in chunks), chunks


async def test_per_chunk_usage_stays_when_the_client_asked_for_it(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.continuous_usage = True
    gw = await start_gateway()
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**STREAM, "stream_options": options}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    *chunks, final, _ = sse_payloads(response.text)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4]
    assert final["usage"]["completion_tokens"] == 4


async def test_non_streaming_usage_is_the_top_level_object(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    # vLLM puts prompt_logprobs after usage: a prompt token that decodes to "usage"
    logprob = {"logprob": -0.5, "rank": 1, "decoded_token": "usage"}
    upstream.script.answer_extra = {
        "prompt_logprobs": [None, {"17": logprob}, {"usage": {"prompt_tokens": 0}}],
    }
    gw = await start_gateway()
    response = await gw.client.post("/v1/completions", json={**CHAT, "prompt": "x"}, headers=AUTH)
    assert response.status_code == 200
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 4]
    assert gw.metric("vkit_gateway_usage_missing_total", {"key": "alice"}) == 0


async def test_an_answer_without_usage_bills_the_reservation_and_is_counted(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.answer_usage = False
    upstream.script.answer_extra = {"note": {"usage": {"prompt_tokens": 1}}}  # not top level
    gw = await start_gateway()
    body = {**CHAT, "max_tokens": 50}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    lease = gw.limiter.leases[0]
    assert lease.reserved == estimate_prompt_tokens(body) + 50
    assert lease.settled == [lease.reserved]
    assert gw.metric("vkit_gateway_usage_missing_total", {"key": "alice"}) == 1


async def test_a_stream_that_ends_without_any_usage_bills_the_reservation(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.answer_usage = False  # neither per-chunk nor final usage
    upstream.script.chunks = 3
    gw = await start_gateway()
    body = {**STREAM, "max_tokens": 50}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    lease = gw.limiter.leases[0]
    assert lease.settled == [lease.reserved]
    assert gw.metric("vkit_gateway_usage_missing_total", {"key": "alice"}) == 1


async def test_embeddings_refuse_stream_true(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    body = {"model": MODEL, "input": "abc", "stream": True}
    response = await gw.client.post("/v1/embeddings", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "stream" and "embeddings" in error["message"]
    assert upstream.bodies == []
    # stream false (or null) is no stream at all: forwarded
    for flag in (False, None):
        body = {"model": MODEL, "input": "abc", "stream": flag}
        response = await gw.client.post("/v1/embeddings", json=body, headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")


def _chunk(completion_tokens: int) -> bytes:
    """One vLLM chat chunk with its running usage (``continuous_usage_stats``)."""
    usage = {"prompt_tokens": 7, "total_tokens": 7 + completion_tokens}
    usage["completion_tokens"] = completion_tokens
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "abcd"}, "finish_reason": None}],
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class _BehindResponse:
    """A stream whose first chunk was read, and whose next chunks had come (in the
    connection, not yet read) when the client left; then nothing more comes."""

    status = 200
    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.waiting = b"".join(_chunk(4 * i) for i in range(2, 6)) + b'data: {"id'
        self.aborted = False

    async def read(self) -> bytes:
        raise AssertionError("a stream is read by chunks")

    async def chunks(self) -> AsyncIterator[bytes]:
        yield _chunk(4)
        await asyncio.Event().wait()  # what came next is in the connection, unread
        yield b""

    def unread(self) -> bytes:
        waiting, self.waiting = self.waiting, b""
        return waiting

    def release(self) -> None:
        raise AssertionError("a cut stream is aborted, not released")

    def abort(self) -> None:
        self.aborted = True


class _BehindClient:
    def __init__(self) -> None:
        self.responses: list[_BehindResponse] = []

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> _BehindResponse:
        self.responses.append(_BehindResponse())
        return self.responses[-1]

    async def aclose(self) -> None:
        pass


async def test_a_client_that_leaves_is_billed_what_had_come_and_was_not_yet_read(
    start_gateway: GatewayFactory,
) -> None:
    """The gateway fell behind the upstream (it had read one chunk of five when the client
    left): the chunks already in the connection are billed, up to the last whole one
    (20 tokens), not only the one read (4); vLLM generated them all before the abort."""
    client = _BehindClient()
    gw = await start_gateway(upstream_client=client)
    async with gw.client.stream("POST", "/v1/chat/completions", json=STREAM, headers=AUTH) as r:
        async for chunk in r.aiter_bytes():
            assert b"abcd" in chunk
            break
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    assert client.responses[0].aborted
    assert gw.limiter.leases[0].settled == [7 + 20]
    assert gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS) == 20
