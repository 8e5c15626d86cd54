"""A body over the size limit: the rest read and dropped, so that the client reads the 413.

A server that closes a connection while data it has not read sits in its receive buffer
makes the kernel answer with a reset (RST), not a clean close (RFC 1122 4.2.2.13; Linux
does so: docs/gateway-server.md#a-body-refused-for-its-size). A client still sending its
body then fails its write with ``ECONNRESET``, and the 413 already sent may be thrown away
with its receive buffer before it reads it. uvicorn
(0.55, h11 and httptools alike) closes the connection right after the answer when the
client sent ``Connection: close`` (or spoke HTTP/1.0); on a connection kept alive it reads
and drops the rest of the body itself, after the answer, without bound.

So before answering 413 the gateway reads and drops the rest of the body, up to the limit
again (a body of up to twice the limit is drained) and for at most ``DRAIN_S`` seconds, as
NGINX's ``lingering_close`` reads for a while before it closes. Drained to its end, the
connection is left as the client asked. A body that is longer still (declared or found so),
or that is still coming after ``DRAIN_S``, is answered at once with ``Connection: close``:
uvicorn then closes the connection (its reading is bounded; the client may see a reset).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.errors import PayloadTooLarge

DRAIN_S = 5.0  # the longest the rest of a refused body is read for


async def refuse_oversized(
    chunks: AsyncIterator[bytes], limit: int, received: int, declared: int | None
) -> PayloadTooLarge:
    """The 413 to raise for a body over ``limit`` bytes, once the rest of it is dropped.

    ``chunks``: the rest of the body; ``received``: the bytes read so far; ``declared``: its
    ``Content-Length``, when it has one. May raise ``ClientDisconnect`` (the client left)."""
    refusal = PayloadTooLarge(f"the body is over the {limit} byte limit")
    bound = 2 * limit
    if declared is not None and declared > bound:
        refusal.headers["connection"] = "close"
        return refusal
    try:
        async with asyncio.timeout(DRAIN_S):
            async for chunk in chunks:
                received += len(chunk)
                if received > bound:
                    break
            else:
                return refusal  # drained to its end
    except TimeoutError:
        pass
    refusal.headers["connection"] = "close"
    return refusal
