"""Stalled clients against the gateway's bounds: the prober keeps its own connections, one key
never holds more than its concurrency, and the gateway-wide in-flight bound answers 503."""

from __future__ import annotations

import contextlib
from typing import Any

from gateway.client import AiohttpClient
from gateway.limits import MemoryLimiter
from tests.gateway.conftest import GatewayFactory, wait_until
from tests.gateway.doubles import Key
from tests.vllm_standin import ScriptedUpstream

STREAM = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": True}
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def stalled_stream(stack: contextlib.AsyncExitStack, gw: Any, secret: str) -> None:
    """A stream that got its first chunk and then hangs, holding its upstream connection
    until ``stack`` closes (the chunk iterator is kept: a collected one closes the stream)."""
    response = await stack.enter_async_context(
        gw.client.stream("POST", "/v1/chat/completions", json=STREAM, headers=bearer(secret))
    )
    assert response.status_code == 200
    chunks = response.aiter_bytes()
    stack.push_async_callback(chunks.aclose)
    await anext(chunks)


async def test_stalled_streams_do_not_starve_the_prober(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks, upstream.script.stall_after = 10, 1
    requests_pool = AiohttpClient(connect_timeout=1.0, max_connections=2)
    gw = await start_gateway(keys={"a": Key("alice")}, upstream_client=requests_pool)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):  # every connection of the requests' pool is held
            await stalled_stream(stack, gw, "a")
        upstream.script.models = ["tiny-llama", "new-model"]
        pool = gw.app.running.pool
        await wait_until(lambda: "new-model" in pool.upstreams[0].models)  # probes get through
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_one_key_and_all_keys_are_bounded_with_retry_after(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks, upstream.script.stall_after = 10, 1
    keys = {s: Key(name, concurrency=None) for s, name in (("a", "alice"), ("b", "bob"))}  # type: ignore[arg-type]
    keys["c"] = Key("carol", concurrency=5)  # set in the file: the default does not apply
    gw = await start_gateway(
        keys=keys,
        limiter=MemoryLimiter(clock=lambda: 0.0, default_concurrency=2),
        upstream_client=AiohttpClient(connect_timeout=1.0, max_connections=4),
        max_in_flight=3,
        default_key_concurrency=2,
    )
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stalled_stream(stack, gw, "a")
        third = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer("a"))
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert third.headers["retry-after"] == "1"
        other = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer("b"))
        assert other.status_code == 200  # alice holds her two connections, not all of them
        await stalled_stream(stack, gw, "b")  # the third request in flight: the bound is full
        busy = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer("c"))
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "gateway_busy"
        assert busy.headers["retry-after"] == "1"
        unread = await gw.client.post(
            "/v1/chat/completions", content=b"{not json", headers=bearer("c")
        )
        assert unread.status_code == 503, unread.text  # refused before its body is read
        refused = {"key": "carol", "reason": "in_flight"}
        assert gw.metric("vkit_gateway_rate_limited_total", refused) == 2
        assert (
            gw.metric("vkit_gateway_rate_limited_total", {"key": "alice", "reason": "concurrency"})
            == 1
        )
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200
    await wait_until(lambda: gw.metric("vkit_gateway_in_flight_requests") == 0)
    again = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer("c"))
    assert again.status_code == 200  # every slot came back
