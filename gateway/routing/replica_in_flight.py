"""The gateway's exact in-flight count per replica (:attr:`gateway.upstreams.Upstream.in_flight`).

A request counts from the moment it is sent until its answer is given back: the count goes
up in :func:`sending` and down once, whichever comes first of the send failing, the
response being released (read to the end) or aborted (a timeout, the client gone, the
replica dying mid-stream). Bursts between two scrapes of vLLM's gauges are seen this way,
and a count can neither leak nor go negative.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from gateway.client import UpstreamResponse
from gateway.upstreams import Upstream


@contextlib.contextmanager
def sending(upstream: Upstream) -> Iterator[None]:
    """Count a send to ``upstream``; the count is given back if the send raises."""
    upstream.in_flight += 1
    try:
        yield
    except BaseException:
        upstream.in_flight -= 1
        raise


class InFlightResponse:
    """``response``, giving back ``upstream``'s in-flight count at its first release/abort."""

    __slots__ = ("_response", "_upstream", "content_type", "status")

    def __init__(self, response: UpstreamResponse, upstream: Upstream) -> None:
        self._response = response
        self._upstream: Upstream | None = upstream
        self.status = response.status
        self.content_type = response.content_type

    async def read(self) -> bytes:
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.chunks()

    def unread(self) -> bytes:
        return self._response.unread()

    def release(self) -> None:
        self._done()
        self._response.release()

    def abort(self) -> None:
        self._done()
        self._response.abort()

    def _done(self) -> None:
        if self._upstream is not None:
            self._upstream.in_flight -= 1
            self._upstream = None
