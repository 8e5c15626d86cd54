"""The least a Python proxy can do per request, as three servers (run by ``bench/servers.py``).

- ``app``: an ASGI app that reads the body, sends it upstream with the gateway's own client
  (``gateway/raw_client.py``) and relays the answer: no key, no limits, no metrics. Served by
  uvicorn (uvloop, httptools: what the gateway runs on) or by granian (its ASGI interface).
- ``rsgi``: the same for granian's own interface (RSGI).
- ``python bench/minimal_proxy.py --raw PORT``: a byte pass-through on asyncio protocols and
  httptools, no framework and no task per request: the floor of any Python proxy here.

The upstream's URL comes from ``VKIT_BENCH_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

UPSTREAM = os.environ.get("VKIT_BENCH_UPSTREAM", "http://127.0.0.1:9000")
_HEAD = [(b"content-type", b"application/json")]
_client: Any = None


def _upstream_client() -> Any:
    global _client
    if _client is None:
        from gateway.raw_client import RawClient

        _client = RawClient(5.0)
    return _client


async def app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":  # readiness
        await send({"type": "http.response.start", "status": 200, "headers": _HEAD})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    answer = await _upstream_client().send(
        "POST", UPSTREAM + scope["path"], {"content-type": "application/json"}, body
    )
    headers = [(b"content-type", answer.content_type.encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    if answer.content_type.startswith("text/event-stream"):
        async for chunk in answer.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": await answer.read()})
    answer.release()


async def rsgi(scope: Any, protocol: Any) -> None:
    body = await protocol()
    if scope.method == "GET":
        protocol.response_bytes(200, [("content-type", "application/json")], b"{}")
        return
    answer = await _upstream_client().send(
        "POST", UPSTREAM + scope.path, {"content-type": "application/json"}, body
    )
    headers = [("content-type", answer.content_type)]
    if answer.content_type.startswith("text/event-stream"):
        transport = protocol.response_stream(answer.status, headers)
        async for chunk in answer.chunks():
            await transport.send_bytes(chunk)
    else:
        protocol.response_bytes(answer.status, headers, await answer.read())
    answer.release()


class _Upstream(asyncio.Protocol):
    """The upstream leg of one client connection: its bytes go to the client as they come."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)


class _Client(asyncio.Protocol):
    """One client connection: each request parsed, sent upstream on the connection's own
    upstream connection; GETs answered here (readiness)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport: Any = transport  # uvloop's transports are not asyncio.Transport's
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Any = None
        self.waiting: list[bytes] | None = None
        self.url = b""
        self.parts: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.parts = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_method() == b"GET":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            )
            return
        body = b"".join(self.parts)
        request = b"POST %s HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\n" % (
            self.url
        ) + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        if self.upstream is not None:
            self.upstream.write(request)
        elif self.waiting is not None:
            self.waiting.append(request)
        else:
            self.waiting = [request]
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, _, port = UPSTREAM.removeprefix("http://").partition(":")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            lambda: _Upstream(self.transport), host, int(port)
        )
        self.upstream = transport
        for request in self.waiting or []:
            transport.write(request)
        self.waiting = None


async def _serve_raw(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Client, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    if sys.argv[1:2] != ["--raw"] or len(sys.argv) != 3:
        sys.exit("usage: python bench/minimal_proxy.py --raw PORT")
    uvloop.run(_serve_raw(int(sys.argv[2])))
