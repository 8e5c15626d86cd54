"""The upstream client for plain-http upstreams: HTTP/1.1 on asyncio's own transports.

One :class:`asyncio.Protocol` per connection, the answer's head and body framing
(Content-Length, chunked, or until the connection closes) parsed by httptools (llhttp, the
parser uvicorn itself uses). It does what the proxy needs of
:class:`gateway.client.UpstreamClient` and nothing more, for a fifth of aiohttp's CPU per
whole answer and a third per stream (docs/gateway-cost.md#the-upstream-client). https://
upstreams (a remote endpoint) keep aiohttp: :class:`SchemeClient` chooses by the URL's
scheme, per request.

Connections are kept alive in a pool per (host, port), the most recently used first. One
idle for ``KEEPALIVE_S`` is closed (before vLLM's own keep-alive ends it: see
:mod:`gateway.client`), by a sweep every half second and again when it is taken. At most
``max_connections`` are in use at once (a request past that waits for one); at most as many
are kept idle. ``abort`` closes the connection, since vLLM aborts a generation only when
its connection closes.

The failures keep :mod:`gateway.client`'s meaning. A connection taken from the pool that
closes before any byte of an answer came (the upstream closed it as the request went out)
is, for a POST, :class:`UpstreamDropped` like any other: the upstream may have read the
request, so it is not resent; closing idle ones before the upstream does is what keeps that
race away. A GET (probes, ``/metrics``) is sent once more on a new connection, as aiohttp
does for idempotent methods.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from gateway.client import (
    KEEPALIVE_S,
    AiohttpClient,
    UpstreamBadResponse,
    UpstreamBroken,
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamDropped,
    UpstreamResponse,
)

_PAUSE_AT = 1 << 16  # body bytes buffered and not yet read at which reading pauses
_SWEEP_S = 0.5
_UNREAD_READ = 1 << 18  # bytes per read of a socket's receive queue (asyncio's own size)
# At most this much is read from the socket by ``unread``: what a loopback receive queue holds
# when the gateway fell behind, bounded so that an upstream writing on cannot hold the loop.
UNREAD_CAP = 1 << 22
_RESENT_ON_STALE = frozenset({"GET", "HEAD"})


class _Connection(asyncio.Protocol):
    """One upstream connection and the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.busy = False  # a request was sent and its answer is not over
        self.closed = False
        self.idle_since = 0.0
        self.keep_alive = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = "application/json"
        self.head = False  # the head is parsed
        self.complete = False  # the whole answer is parsed
        self.received = False  # some byte of the answer came
        self._framed = False  # Content-Length or chunked: the end is in the data, not at EOF
        self._failure: tuple[type[UpstreamClientError], str] | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- the request side

    def start(self, request: bytes) -> None:
        """Send ``request`` (head and body), the previous answer on this connection over."""
        if self.transport is None:  # closed as it opened: nothing went out
            raise UpstreamConnectError("the connection closed before the request went out")
        self._reset()
        self.busy = True
        self.transport.write(request)

    async def answer_head(self) -> None:
        """Wait for the answer's head; raise UpstreamBadResponse or UpstreamDropped."""
        while not self.head:
            if self._failure is not None:
                kind, message = self._failure
                raise kind(message)
            await self._wait()

    async def next_chunk(self) -> bytes:
        """The body bytes that came since the last call (``b""`` at the end): waits for
        some; raises UpstreamBroken once what came before the break was read."""
        body = self._body
        while not body:
            if self.complete:
                return b""
            if self._failure is not None:
                raise UpstreamBroken(self._failure[1])
            await self._wait()
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def unread(self, cap: int = UNREAD_CAP) -> bytes:
        """The body bytes that came and were not read, taken without waiting: those parsed
        already, and what the socket's receive queue holds (read now, up to ``cap`` bytes).
        For an answer about to be aborted: what the upstream sent before the abort, which
        the key is billed for (docs/gateway-server.md#a-client-that-leaves-a-stream)."""
        transport = self.transport
        if transport is not None and not self.complete and self._failure is None:
            sock = transport.get_extra_info("socket")
            fd = -1 if sock is None else sock.fileno()
            left = cap
            while fd >= 0 and left > 0 and self._parser is not None and not self.complete:
                try:
                    data = os.read(fd, min(left, _UNREAD_READ))
                except OSError:  # nothing more queued (EAGAIN), or the connection broke
                    break
                if not data:
                    break
                left -= len(data)
                self.data_received(data)
        body = self._body
        data = b"".join(body)
        body.clear()
        self._buffered = 0
        return data

    async def _wait(self) -> None:
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if not self.busy or self.complete or parser is None:  # nothing asked: not reusable
            self.keep_alive = False
            self.close()
            return
        self.received = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            kind = UpstreamBroken if self.head else UpstreamBadResponse
            self._fail(kind, f"{type(exc).__name__}: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.complete:
            if self.head and not self._framed and exc is None:
                self.complete = True  # a body that ends with the connection: its clean end
            elif self.head:
                self._fail(UpstreamBroken, _lost(exc, "the connection closed mid-body"))
            else:
                self._fail(UpstreamDropped, _lost(exc, "the connection closed before an answer"))
        self.keep_alive = False
        self.transport = None
        self._parser = None  # the parser holds this protocol: no cycle left behind
        self._wake()

    def pause_writing(self) -> None:  # a request body is written whole; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    def _fail(self, kind: type[UpstreamClientError], message: str) -> None:
        if self._failure is None:
            self._failure = (kind, message)
        self._wake()

    # -- httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1")
        elif name == b"content-length" or name == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self.complete:  # a second answer to one request: the connection is not reused
            self.keep_alive = False
            return
        self.status = self._parser.get_status_code()
        self.head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self.complete:
            return
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()


def _lost(exc: Exception | None, what: str) -> str:
    return what if exc is None else f"{what}: {type(exc).__name__}: {exc}"


class RawResponse:
    """An answer on a :class:`_Connection`; the connection goes back to ``client``'s pool
    at ``release`` when the answer was read whole and the upstream keeps it open."""

    __slots__ = ("_client", "_conn", "_key", "content_type", "status")

    def __init__(self, client: RawClient, key: tuple[str, int], conn: _Connection) -> None:
        self._client = client
        self._key = key
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.content_type = conn.content_type

    async def read(self) -> bytes:
        conn = self._conn
        assert conn is not None, "read after release"
        parts = []
        while chunk := await conn.next_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None, "read after release"
        while chunk := await conn.next_chunk():
            yield chunk

    def unread(self, cap: int = UNREAD_CAP) -> bytes:
        conn = self._conn
        return b"" if conn is None else conn.unread(cap)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client.give_back(self._key, conn)

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.keep_alive = False
            self._client.give_back(self._key, conn)


class RawClient:
    """HTTP/1.1 to ``http://`` URLs with keep-alive connections; ``connect_timeout`` bounds
    the TCP connect, ``max_connections`` the connections in use at once, ``keepalive`` how
    long one stays open idle."""

    def __init__(
        self, connect_timeout: float, max_connections: int = 1024, keepalive: float = KEEPALIVE_S
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_idle = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._addresses: dict[str, tuple[str, int]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        authority, target = _split(url)
        key = self._addresses.get(authority)
        if key is None:
            key = self._address(authority)
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None or method == "POST":
            lines.append(f"content-length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        request = "".join(lines).encode("latin-1")
        if body:
            request += body
        await self._slots.acquire()
        try:
            return await self._exchange(method, key, request)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, method: str, key: tuple[str, int], request: bytes) -> RawResponse:
        conn = self._take(key)
        if conn is not None:
            conn.start(request)
            try:
                await conn.answer_head()
                return RawResponse(self, key, conn)
            except UpstreamDropped:
                conn.close()
                if method not in _RESENT_ON_STALE or conn.received:
                    raise
            except BaseException:
                conn.close()
                raise
        conn = await self._connect(key)
        conn.start(request)
        try:
            await conn.answer_head()
        except BaseException:
            conn.close()
            raise
        return RawResponse(self, key, conn)

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = idle[0].loop.time() - self._keepalive
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), *key)
        except TimeoutError:
            message = f"no connection to {key[0]}:{key[1]} within {self._connect_timeout:g} s"
            raise UpstreamConnectError(message) from None
        except OSError as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from None
        return conn

    def give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        """The answer on ``conn`` is over: keep it for the next request, or close it."""
        self._slots.release()
        reusable = conn.complete and conn.keep_alive and not conn.closed and not self._closed
        if not reusable or self._idle_count >= self._max_idle:
            conn.close()
            return
        conn.busy = False
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(key, []).append(conn)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for ``keepalive``; again every half second while any is."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self._keepalive
        for idle in self._idle.values():
            expired = [c for c in idle if c.closed or c.idle_since <= oldest]
            for conn in expired:
                idle.remove(conn)
                conn.close()
            self._idle_count -= len(expired)
        if self._idle_count:
            self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    def _address(self, authority: str) -> tuple[str, int]:
        parts = urlsplit(f"http://{authority}")
        if parts.hostname is None:
            raise UpstreamConnectError(f"no host in {authority!r}")
        key = (parts.hostname, parts.port or 80)
        if len(self._addresses) >= 4096:  # upstreams come and go: keep the table bounded
            self._addresses.clear()
        self._addresses[authority] = key
        return key

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0


def _split(url: str) -> tuple[str, str]:
    """``http://host:port/path?query`` -> (``host:port``, ``/path?query``)."""
    rest = url[url.index("://") + 3 :]
    slash = rest.find("/")
    if slash < 0:
        return rest, "/"
    return rest[:slash], rest[slash:]


class SchemeClient:
    """The gateway's upstream client, the one place it is chosen: :class:`RawClient` for
    ``http://`` URLs, aiohttp (made on first use) for the others."""

    def __init__(self, connect_timeout: float, max_connections: int = 1024) -> None:
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._raw = RawClient(connect_timeout, max_connections)
        self._tls: AiohttpClient | None = None

    def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        if url.startswith("http://"):
            return self._raw.send(method, url, headers, body)
        if self._tls is None:
            self._tls = AiohttpClient(self._connect_timeout, self._max_connections)
        return self._tls.send(method, url, headers, body)

    async def aclose(self) -> None:
        await self._raw.aclose()
        if self._tls is not None:
            await self._tls.aclose()
