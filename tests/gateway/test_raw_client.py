"""The raw upstream client (gateway/raw_client.py) against a scripted upstream on a real
socket: framing split across reads, the four failure kinds, the keep-alive pool, abort."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.client import (
    UpstreamBadResponse,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamDropped,
)
from gateway.raw_client import RawClient, SchemeClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"content-type": "application/json"}


class Scripted:
    """A loopback server running ``handler`` per connection; counts connections and EOFs."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.url = ""
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[Scripted]:
    upstream = Scripted(handler)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        for writer in list(upstream.writers):
            writer.transport.abort()
        await server.wait_closed()


@asynccontextmanager
async def raw_client(**options: float) -> AsyncIterator[RawClient]:
    client = RawClient(connect_timeout=1.0, **options)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.aclose()
        await asyncio.sleep(0.01)  # the transports' close callbacks


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def dribble(writer: asyncio.StreamWriter, data: bytes, size: int = 3) -> None:
    """``data`` in pieces of ``size`` bytes, each its own read on the other side."""
    for i in range(0, len(data), size):
        writer.write(data[i : i + size])
        await writer.drain()
        await asyncio.sleep(0.001)


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
)


async def test_a_head_and_chunked_body_split_across_reads_parse_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await dribble(writer, CHUNKED)
        await reader.read()

    async with scripted(handler) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/v1/x", HEADERS, b"{}")
        assert (response.status, response.content_type) == (200, "text/event-stream")
        chunks = [c async for c in response.chunks()]
        response.release()
        assert b"".join(chunks) == b"hello, world"
        assert len(chunks) > 1  # passed on as they came, not held to the end


async def test_the_request_carries_host_headers_and_length() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async with scripted(handler) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/v1/x?a=1", HEADERS, b"{}")
        assert await response.read() == b"ok"
        assert response.content_type == "application/json"  # none sent: JSON assumed
        response.release()
    host = upstream.url.removeprefix("http://").encode()
    assert seen[0].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\nhost: " + host + b"\r\n")
    assert b"content-type: application/json\r\n" in seen[0]
    assert seen[0].endswith(b"content-length: 2\r\n\r\n{}")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_connection_closed_mid_body_is_broken_after_what_came(framing: str) -> None:
    if framing == "chunked":
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n9\r\nwor"
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhellowor"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with scripted(handler) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        got = b""
        with pytest.raises(UpstreamBroken):
            async for chunk in response.chunks():
                got += chunk
        assert got in (b"hellowor", b"hello")  # llhttp passes a chunk's part on
        response.abort()
        again = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        with pytest.raises(UpstreamBroken):
            await again.read()
        again.abort()


async def test_a_body_without_length_ends_cleanly_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await dribble(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome body", 4)

    async with scripted(handler) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        assert await response.read() == b"some body"
        response.release()
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        assert await response.read() == b"some body"
        response.release()
    assert upstream.connections == 2


def keep_alive_server(answers: int, then: str = "wait") -> Handler:
    """Answers ``answers`` requests on one connection, then reads the next request and
    closes without answering (``then="drop"``), or waits for the client to close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(answers):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if then == "drop":
            await read_request(reader)
            return
        await reader.read()

    return handler


async def test_connections_are_reused_and_bounded() -> None:
    async with scripted(keep_alive_server(100)) as upstream, raw_client() as client:
        for _ in range(5):
            response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
            assert await response.read() == b"ok"
            response.release()
        assert upstream.connections == 1

    async with scripted(keep_alive_server(100)) as upstream:
        async with raw_client(max_connections=2) as client:

            async def one() -> bytes:
                response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
                await asyncio.sleep(0.02)
                try:
                    return await response.read()
                finally:
                    response.release()

            assert await asyncio.gather(*(one() for _ in range(8))) == [b"ok"] * 8
        assert upstream.most_open == 2


async def test_an_idle_connection_is_closed_before_the_upstream_would() -> None:
    async with scripted(keep_alive_server(100)) as upstream, raw_client(keepalive=0.05) as client:
        response = await client.send("GET", upstream.url + "/", HEADERS, None)
        await response.read()
        response.release()
        await asyncio.sleep(0.1)  # past keepalive: not taken again
        response = await client.send("GET", upstream.url + "/", HEADERS, None)
        await response.read()
        response.release()
        assert upstream.connections == 2
        for _ in range(100):  # and the sweep closes the idle one
            if upstream.open == 0:
                break
            await asyncio.sleep(0.02)
        assert upstream.open == 0


async def test_a_pooled_connection_the_upstream_closed_meanwhile_is_not_used() -> None:
    async with scripted(keep_alive_server(1, then="close")) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        await response.read()
        response.release()
    # (the server above waits for the client; this one closes after its answer)

    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with scripted(closes) as upstream, raw_client() as client:
        for _ in range(3):
            response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.02)  # the close reaches the client
        assert upstream.connections == 3


async def test_a_pooled_connection_dropped_as_the_request_went_out() -> None:
    """The race a keep-alive pool has: the upstream closes an idle connection as a request
    goes out on it. It may have read the request, so a POST is not resent (UpstreamDropped:
    not retried elsewhere either); a GET is sent once more on a new connection."""
    async with scripted(keep_alive_server(1, then="drop")) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        await response.read()
        response.release()
        with pytest.raises(UpstreamDropped):
            await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        assert upstream.connections == 1

        response = await client.send("GET", upstream.url + "/", HEADERS, None)
        await response.read()
        response.release()
        with_get = upstream.connections
        response = await client.send("GET", upstream.url + "/", HEADERS, None)
        assert await response.read() == b"ok"
        response.release()
        assert upstream.connections == with_get + 1


async def test_abort_closes_the_connection_mid_stream() -> None:
    closed = asyncio.Event()

    async def streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"4\r\ndata\r\n")
            await writer.drain()
            if await _closed_within(reader, 0.01):
                closed.set()
                return

    async with scripted(streams) as upstream, raw_client() as client:
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        chunks = response.chunks()
        assert await anext(chunks)
        response.abort()
        await asyncio.wait_for(closed.wait(), 2)
        response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        response.abort()
        assert upstream.connections == 2


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


FAILURES = {
    "not http": (b"hello there\r\n\r\n", UpstreamBadResponse),
    "bad length": (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", UpstreamBadResponse),
    "half a head": (b"HTTP/1.1 200 OK\r\nContent-Ty", UpstreamDropped),
    "nothing": (b"", UpstreamDropped),
}


@pytest.mark.parametrize("answer,kind", FAILURES.values(), ids=FAILURES.keys())
async def test_a_bad_or_missing_head_raises_its_kind(answer: bytes, kind: type[Exception]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with scripted(handler) as upstream, raw_client() as client:
        with pytest.raises(kind):
            await client.send("POST", upstream.url + "/", HEADERS, b"{}")
        # the slot came back: the client still sends
        with pytest.raises(kind):
            await client.send("POST", upstream.url + "/", HEADERS, b"{}")


async def test_nothing_listening_is_a_connect_error() -> None:
    async with scripted(keep_alive_server(1)) as upstream:
        url = upstream.url
    async with raw_client() as client:
        with pytest.raises(UpstreamConnectError):
            await client.send("POST", url + "/", HEADERS, b"{}")


async def test_the_scheme_picks_the_client() -> None:
    async with scripted(keep_alive_server(100)) as upstream:
        client = SchemeClient(connect_timeout=0.2)
        try:
            response = await client.send("GET", upstream.url + "/", HEADERS, None)
            assert type(response).__name__ == "RawResponse"
            response.release()
            tls_url = upstream.url.replace("http://", "https://")
            with pytest.raises(UpstreamConnectError):  # aiohttp's TLS handshake, refused
                await client.send("GET", tls_url + "/", HEADERS, None)
        finally:
            await client.aclose()
            await asyncio.sleep(0.01)


def test_it_runs_on_uvloop_as_shipped() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the gateway runs on them."""
    import uvloop

    async def exchange() -> tuple[bytes, bytes, int]:
        async with scripted(keep_alive_server(2)) as upstream, raw_client() as client:
            bodies = []
            for _ in range(2):
                response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
                bodies.append(await response.read())
                response.release()
            return bodies[0], bodies[1], upstream.connections

    assert uvloop.run(exchange()) == (b"ok", b"ok", 1)


async def test_bytes_past_the_answer_leave_the_connection_unused() -> None:
    """An upstream that sends more than one answer to a request is not trusted with the next."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad")

    async with scripted(handler) as upstream, raw_client() as client:
        for _ in range(2):
            response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
            assert (response.status, await response.read()) == (200, b"ok")
            response.release()
            await asyncio.sleep(0.01)
        assert upstream.connections == 2


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _ThreadedStream:
    """An upstream in a thread that answers one request with a chunked stream: ``first``,
    then each part written when the test asks (``write``) and in the kernel when it returns,
    whatever the test's event loop does meanwhile."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._parts: queue.Queue[bytes | None] = queue.Queue()
        self._written = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while (part := self._parts.get()) is not None:
                conn.sendall(part)
                self._written.set()
            conn.recv(1)  # until the client closes

    def write(self, part: bytes) -> None:
        """Blocks (the loop too) until ``part`` is sent, then lets the kernel deliver it."""
        self._written.clear()
        self._parts.put(part)
        assert self._written.wait(2)
        time.sleep(0.05)

    def close(self) -> None:
        self._parts.put(None)
        self._listener.close()


async def test_unread_takes_what_was_parsed_and_what_the_socket_holds_without_waiting() -> None:
    """What a stream's upstream sent and the gateway had not read when its client left:
    the parsed bytes not yet taken, then the socket's receive queue, framing decoded."""
    upstream = _ThreadedStream()
    try:
        async with raw_client() as client:
            response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
            chunks = response.chunks()
            upstream.write(_chunked(b"one;"))
            assert await anext(chunks) == b"one;"
            upstream.write(_chunked(b"two;"))
            await asyncio.sleep(0.05)  # the loop reads and parses it; nobody takes it
            upstream.write(_chunked(b"three;") + _chunked(b"fo"))  # the loop never runs
            upstream.write(_chunked(b"ur;"))
            assert response.unread() == b"two;three;four;"
            assert response.unread() == b""  # nothing more came
            upstream.write(_chunked(b"five;") + _chunked(b"six;"))
            assert response.unread() == b"five;six;"
            response.abort()
    finally:
        upstream.close()


async def test_unread_reads_the_socket_up_to_its_cap() -> None:
    upstream = _ThreadedStream()
    try:
        async with raw_client() as client:
            response = await client.send("POST", upstream.url + "/", HEADERS, b"{}")
            parts = [_chunked(b"%04d;" % i) for i in range(100)]  # 10 bytes each, framed
            upstream.write(b"".join(parts))
            assert response.unread(cap=100) == b"".join(b"%04d;" % i for i in range(10))
            assert response.unread() == b"".join(b"%04d;" % i for i in range(10, 100))
            response.abort()
    finally:
        upstream.close()


def test_unread_under_uvloop_as_the_gateway_runs() -> None:
    """`vkit gateway` runs uvloop, whose transports give a socket of their own kind."""
    import uvloop  # a dependency of the kit: the gateway's loop

    uvloop.run(test_unread_takes_what_was_parsed_and_what_the_socket_holds_without_waiting())
    uvloop.run(test_unread_reads_the_socket_up_to_its_cap())
