"""gateway.held_head: a response's head goes out with what follows it in the same loop step.

The transport alone, over a recording transport; then uvicorn with the protocol on a real
socket, its writes counted under the held head: one write per whole answer, a stream's head
sent while the app still waits, keep-alive and a connection closed by the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.held_head import HeldHeadTransport, held_head_protocol, http_protocol

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """A transport that records what reaches it (and passes it on to ``inner``)."""

    def __init__(self, inner: asyncio.Transport | None = None) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        if self.inner is not None:
            self.inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self.events.append("close")
        if self.inner is not None:
            self.inner.close()

    def abort(self) -> None:
        self.events.append("abort")
        if self.inner is not None:
            self.inner.abort()

    def __getattr__(self, name: str) -> Any:  # the rest of a real transport's interface
        return getattr(self.inner, name)


async def test_a_head_goes_out_with_the_body_written_in_the_same_step() -> None:
    inner = Recording()
    transport = HeldHeadTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert inner.writes == [] and transport.held
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the step's end writes nothing more
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_alone_goes_out_at_the_end_of_the_step() -> None:
    inner = Recording()
    transport = HeldHeadTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.writes == [HEAD] and not transport.held
    transport.write(b"{}")  # a body written later goes out as it comes
    assert inner.writes == [HEAD, b"{}"]


async def test_writes_keep_their_order_and_a_close_writes_the_head_first() -> None:
    inner = Recording()
    transport = HeldHeadTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"not a head")
    assert inner.writes == [b"not a head"]  # only heads are held
    transport.write(HEAD)
    transport.writelines([b"a", b"b"])
    assert inner.writes == [b"not a head", HEAD, b"ab"]
    transport.write(HEAD)
    transport.close()
    assert inner.writes[-1] == HEAD and inner.events == ["close"]
    transport.write(HEAD)
    transport.abort()  # an abort drops what is unsent, as a transport's does
    await asyncio.sleep(0)
    assert inner.writes[-1] == HEAD and inner.events == ["close", "abort"]
    assert inner.writes.count(HEAD) == 2


async def test_a_large_body_follows_the_held_head_in_one_writelines() -> None:
    inner = Recording()
    transport = HeldHeadTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    body = b"x" * 200_000
    transport.write(HEAD)
    transport.write(body)
    assert inner.writes == [HEAD + body]


def test_httptools_gets_the_held_head_and_h11_stays_as_uvicorn_names_it() -> None:
    protocol = http_protocol("httptools")
    assert isinstance(protocol, type) and protocol.__name__ == "HeldHeadProtocol"
    assert http_protocol("h11") == "h11"


Counted = list[Recording]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Any], Any]]:
    """Serve an ASGI app on uvicorn with the held-head protocol; each connection's writes,
    as they leave the held head, recorded."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Any) -> tuple[int, Counted]:
        connections: Counted = []

        def wrap(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> Any:
            recording = Recording(transport)
            connections.append(recording)
            return HeldHeadTransport(recording, loop)  # type: ignore[arg-type]

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            http=held_head_protocol(wrap),
            lifespan="off",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        servers.append((server, task))
        return server.servers[0].sockets[0].getsockname()[1], connections

    yield start
    for server, task in servers:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def test_whole_answers_take_one_write_each_on_a_kept_connection(serve: Any) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        body = scope["path"].encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    port, connections = await serve(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for path in ("/one", "/two", "/three"):
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        head, body = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == path.encode()
    writer.close()
    (connection,) = connections
    assert len(connection.writes) == 3  # head and body in one write, three times
    assert [w.rsplit(b"\r\n\r\n", 1)[1] for w in connection.writes] == [b"/one", b"/two", b"/three"]


async def test_a_streams_head_is_sent_while_the_app_waits_for_its_first_event(
    serve: Any,
) -> None:
    first_event = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await first_event.wait()  # the model's first token, say
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    port, connections = await serve(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    async with asyncio.timeout(5):  # the head comes while the app still waits
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    first_event.set()
    async with asyncio.timeout(5):
        rest = await reader.readuntil(b"0\r\n\r\n")
    assert b"data: 1\n\n" in rest and b"data: [DONE]\n\n" in rest
    writer.close()
    assert connections[0].writes[0] == head


async def test_an_answer_that_closes_the_connection_is_written_before_the_close(
    serve: Any,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-length", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})

    port, connections = await serve(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()  # up to the server's close
    assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"\r\n\r\nno")
    assert connections[0].writes == [answer] and "close" in connections[0].events
    writer.close()
