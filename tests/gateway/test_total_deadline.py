"""``timeouts.total`` bounds the whole request, however fast the upstream and however slow
the client: an upstream that floods and a client that stops reading are both cut by it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from gateway.relay import WRITE_GRACE_S
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, wait_until
from tests.vllm_standin import Endless, InThread, RawUpstream, endless_sse

STREAM = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_the_total_deadline_ends_a_stream_that_floods(start_gateway: GatewayFactory) -> None:
    """The upstream always has the next chunk ready: no read ever waits, yet the stream ends
    at ``total`` with an error event and ``[DONE]``, and the upstream is closed."""
    total = 1.0
    raw = RawUpstream()
    raw.answers["/v1/chat/completions"] = endless_sse(event_bytes=1000)
    with InThread(raw):
        gw = await start_gateway(upstreams=[raw.url], timeouts={"total": total, "idle": 30})
        relayed, tail = 0, b""
        began = time.monotonic()
        try:
            async with asyncio.timeout(total + 8):
                async with gw.client.stream(
                    "POST", "/v1/chat/completions", json=STREAM, headers=AUTH
                ) as response:
                    async for chunk in response.aiter_raw():
                        relayed += len(chunk)
                        tail = (tail + chunk)[-4096:]
        except TimeoutError:
            pytest.fail(f"still streaming {total + 8:g} s later ({relayed >> 20} MiB relayed)")
        ended = time.monotonic() - began
        assert ended < total + WRITE_GRACE_S + 2.0, ended
        events = [e for e in tail.split(b"\n\n") if e]
        assert json.loads(events[-2].removeprefix(b"data: "))["error"]["type"] == "timeout_error"
        assert events[-1] == b"data: [DONE]"
        await wait_until(lambda: raw.cut == 1)
        labels = {"upstream": raw.url.removeprefix("http://"), "kind": "timeout"}
        assert gw.metric("vkit_gateway_upstream_errors_total", labels) == 1


async def test_the_total_deadline_frees_a_client_that_stops_reading(
    start_gateway: GatewayFactory,
) -> None:
    """The client reads for a while, then stops with its socket open. A write that waits
    past ``total`` ends the request then (and a grace of a second), not ``client_write``
    after the stall began: the key's slot and the upstream are released by then."""
    total = 4.0
    reads_for = 3.0  # the stall begins here: client_write later is well past total
    raw = RawUpstream()
    raw.answers["/v1/chat/completions"] = endless_sse(event_bytes=1000)
    with InThread(raw):
        gw = await start_gateway(
            upstreams=[raw.url], timeouts={"total": total, "client_write": total}
        )
        loop = asyncio.get_running_loop()
        parts = urlsplit(gw.url)
        payload = json.dumps(STREAM).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            began = time.monotonic()
            await loop.sock_connect(sock, (parts.hostname, parts.port))
            await loop.sock_sendall(sock, head + payload)
            while time.monotonic() - began < reads_for:
                assert await loop.sock_recv(sock, 1 << 16)
            gone = {"key": "alice", "model": "tiny-llama", "status": "499"}
            await wait_until(lambda: gw.metric("vkit_gateway_requests_total", gone) == 1, 15)
            ended = time.monotonic() - began
            await wait_until(lambda: raw.cut == 1)
            assert gw.metric("vkit_gateway_in_flight_requests") == 0
            assert gw.metric("vkit_gateway_client_write_timeouts_total") == 1
            # before: reads_for + client_write at least (7 s)
            assert ended < total + WRITE_GRACE_S + 1.0, ended


async def test_a_model_list_that_never_ends_upstream_holds_no_client(
    start_gateway: GatewayFactory,
) -> None:
    """``GET /v1/models`` is answered from what the prober last read, never by asking an
    upstream: one whose list sends the head, then a byte now and then for ever, holds no
    client (the prober's own timeout judges it)."""
    total = 1.0
    async with RawUpstream() as raw:
        gw = await start_gateway(
            upstreams=[raw.url], timeouts={"total": total}, health={"interval": 60}
        )
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        raw.answers["/v1/models"] = Endless(head, b" ", interval=0.1)
        asked = len(raw.requests_to("/v1/models"))
        began = time.monotonic()
        response = await gw.client.get("/v1/models", headers=AUTH)
        assert time.monotonic() - began < total
        assert response.status_code == 200, response.text
        assert [m["id"] for m in response.json()["data"]] == ["tiny-llama"]
        assert len(raw.requests_to("/v1/models")) == asked  # the prober's alone
