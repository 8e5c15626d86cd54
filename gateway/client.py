"""The upstream HTTP client seam: one small protocol, and the aiohttp implementation
(https:// upstreams; http:// ones get :mod:`gateway.raw_client`).

The proxy needs four things from a client: send a request and wait for the response
head, read a whole body, iterate body chunks as they arrive, and *close* the connection
(not return it to the pool) when the client went away or a timeout fired, because vLLM
aborts a request only when its connection closes
(docs/vllm-server.md#client-disconnects-and-aborts).

aiohttp was kept after measuring the candidates the issue names with
``bench/clients.py`` (client CPU ms per request at concurrency 16, 16-chunk streams, two
runs on a 2-core VM, the stand-in upstream pinned to the other core):

    client                        non-stream     stream
    aiohttp 3.14                  0.08-0.12      0.17-0.18
    httpx 0.28 + httpx-aiohttp    0.24-0.27      0.30-0.34
    httpx2 2.16                   0.48-0.52      0.62-0.67
    httpx 0.28                    1.24-1.31      1.51-1.54

Tests inject their own :class:`UpstreamClient` where a real socket is not needed.

Failures, each telling the proxy whether the upstream may have started the request
(which decides whether it may be sent to another upstream):

    UpstreamClientError       base of all of them
      UpstreamConnectError    no connection was made: the request never left (retry-safe)
      UpstreamBadResponse     the answer's head was not HTTP (bad status line, bad
                              Content-Length): no vLLM answers so (retry-safe)
      UpstreamDropped         connection closed or reset after the request was sent and
                              before a head came: it may be generating (not retry-safe)
      UpstreamBroken          the body broke off after the head
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp


class UpstreamClientError(Exception):
    """A request to an upstream failed; the subclass says how far it got."""


class UpstreamConnectError(UpstreamClientError):
    """The upstream could not be reached (refused, DNS, connect timeout): nothing was sent."""


class UpstreamBadResponse(UpstreamClientError):
    """The upstream answered with something that is not an HTTP response head."""


class UpstreamDropped(UpstreamClientError):
    """The connection closed or reset after the request went out, before any answer."""


class UpstreamBroken(UpstreamClientError):
    """The upstream connection failed while the answer was being read."""


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes:
        """The whole body; raises UpstreamBroken."""

    def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; raises UpstreamBroken."""

    def unread(self) -> bytes:
        """The body bytes that came and were not read yet, taken without waiting."""

    def release(self) -> None:
        """Done reading everything: the connection may be reused."""

    def abort(self) -> None:
        """Close the connection now, so the upstream sees the client go away."""


async def read_and_release(response: UpstreamResponse) -> bytes:
    """The whole body (``b""`` when the connection broke off), the connection given back."""
    try:
        return await response.read()
    except UpstreamBroken:
        return b""
    finally:
        response.release()


class UpstreamClient(Protocol):
    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """Send and return once the response head arrived; raise UpstreamConnectError,
        UpstreamBadResponse or UpstreamDropped."""

    async def aclose(self) -> None: ...


class AiohttpResponse:
    __slots__ = ("_response", "content_type", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamBroken(f"{type(exc).__name__}: {exc}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamBroken(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                return
            yield chunk

    def unread(self) -> bytes:
        try:
            return self._response.content.read_nowait()
        except (RuntimeError, aiohttp.ClientError, OSError):  # a read waits, or it broke
            return b""

    def release(self) -> None:
        self._response.release()

    def abort(self) -> None:
        self._response.close()


# Idle connections are closed before vLLM's own keep-alive timeout (uvicorn's, 5 s:
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE) ends them: a request sent on a connection the replica is
# closing at that moment would be dropped, and a dropped request is not retried.
KEEPALIVE_S = 4.0


class AiohttpClient:
    """aiohttp with keep-alive connections; ``connect_timeout`` bounds the TCP connect."""

    def __init__(self, connect_timeout: float, max_connections: int = 1024) -> None:
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=KEEPALIVE_S
                ),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> AiohttpResponse:
        try:
            response = await self._get_session().request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamConnectError(_describe(exc)) from exc
        except aiohttp.ClientResponseError as exc:  # the head did not parse
            raise UpstreamBadResponse(_describe(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:  # disconnected, reset, payload
            raise UpstreamDropped(_describe(exc)) from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
