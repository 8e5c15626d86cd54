"""Layered timeouts, client disconnects and retries before the first byte."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from gateway.body import estimate_prompt_tokens
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, leave_after_two_chunks, wait_until
from tests.vllm_standin import RawUpstream, ScriptedUpstream, sse_answer

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
    billed = await leave_after_two_chunks(gw, "/v1/chat/completions", STREAM)
    await wait_until(lambda: upstream.closed_early == 1)
    # no usage chunk came: the prompt estimate plus the content chunks relayed (>= 2)
    prompt = estimate_prompt_tokens(STREAM)
    assert prompt + 2 <= billed < prompt + 100
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
    pool = gw.app.running.pool
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
    upstream.script.statuses = [503, 503]
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    assert len(upstream.bodies) == 3


async def test_a_502_answer_is_not_retried(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    """Behind NGINX a 502 may stand for a replica that dropped the request after reading
    it: it may be generating, so the request is not sent again."""
    upstream.script.statuses = [502]
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 502
    assert len(upstream.bodies) == 1


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


@asynccontextmanager
async def stalled_client(base_url: str, body: dict[str, Any]) -> AsyncIterator[socket.socket]:
    """A raw client with a tiny receive buffer that sends ``body`` to the chat route and
    then reads nothing (the socket stays open until the block ends)."""
    parts = urlsplit(base_url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    try:
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        await loop.sock_sendall(sock, head.encode() + payload)
        yield sock
    finally:
        sock.close()


async def read_to_end(sock: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            received += chunk
    return bytes(received)


async def test_a_client_that_stops_reading_is_cut_after_the_write_deadline(
    start_gateway: GatewayFactory,
) -> None:
    """Open socket, no recv: the write deadline frees the stream, the upstream and the slot."""
    write_deadline = 0.5
    async with RawUpstream() as raw:
        # ~24 MB of events: several times what the buffers between the upstream and the
        # client hold (about 3 MB were relayed before the stall, measured here).
        events = 6000
        raw.answers["/v1/chat/completions"] = sse_answer(events, event_bytes=4000)
        gw = await start_gateway(upstreams=[raw.url], timeouts={"client_write": write_deadline})
        began = time.monotonic()
        async with stalled_client(gw.url, STREAM) as sock:
            gone = {"key": "alice", "model": "tiny-llama", "status": "499"}
            await wait_until(lambda: gw.metric("vkit_gateway_requests_total", gone) == 1, 15)
            ended_after = time.monotonic() - began
            await wait_until(lambda: raw.cut == 1)  # the upstream connection was closed
            assert gw.metric("vkit_gateway_client_write_timeouts_total") == 1
            assert gw.metric("vkit_gateway_in_flight_requests") == 0
            billed = gw.limiter.leases[0].settled
            prompt = estimate_prompt_tokens(STREAM)
            assert len(billed) == 1 and prompt < billed[0] < prompt + events, billed
            # Reading again, the client finds the stream cut off: no [DONE].
            relayed = await read_to_end(sock, timeout=30)
        assert b"data: {" in relayed and not relayed.endswith(b"data: [DONE]\n\n")
        assert ended_after < write_deadline + 5, ended_after


async def test_the_write_deadline_bounds_each_write_not_the_stream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    """A stream that lasts several write deadlines, to a client that reads, is whole."""
    upstream.script.chunks = 6
    upstream.script.chunk_delay = 0.15
    gw = await start_gateway(timeouts={"client_write": 0.2})
    response = await gw.client.post("/v1/chat/completions", json=STREAM, headers=AUTH)
    assert response.text.endswith("data: [DONE]\n\n")
    assert response.text.count('"content"') == 6
    assert gw.metric("vkit_gateway_client_write_timeouts_total") == 0
    assert upstream.finished == 1
