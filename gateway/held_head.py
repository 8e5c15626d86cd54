"""uvicorn's HTTP protocol with a response's head written together with what follows it.

uvicorn (httptools) writes a response's status line and headers to the socket as soon as
the app sends ``http.response.start``, and the body with the next message: two writes for
an answer whose body is ready at once (every whole answer the gateway relays, and its error
envelopes). Each write is a system call and, on a loopback or LAN connection, one more
delivery the client wakes for; one write was some 8% of the gateway's CPU per whole answer
(docs/gateway-cost.md#the-response-head).

:class:`HeldHeadTransport` holds a head back until the end of the event loop's current
step. What the app writes in the same step (a whole answer's body: the gateway sends it
right after its head) goes out with it in one write; when the app waits in between (a
stream's first token), the head goes out alone one loop step later, as the loop takes its
next ready callback, not after a timer. Writes never change order: any write while a head
is held joins it, and closing the connection writes it first. aiohttp's server does the
same (it sends the headers with the first body write).

    uvicorn.Config(app, http=http_protocol("httptools"), ...)

:func:`held_head_protocol` is uvicorn's httptools protocol with that transport; where
httptools is not installed, the gateway runs uvicorn's h11 protocol unchanged
(:func:`http_protocol`).
"""

from __future__ import annotations

import asyncio
from typing import Any

_HEAD = b"HTTP/1."  # how every response head uvicorn writes begins (its status line)
_JOIN_UP_TO = 65_536  # bytes: a copy below this costs less than a second buffer's bookkeeping


class HeldHeadTransport(asyncio.Transport):
    """``transport`` with each written response head held until what follows it in the
    same loop step, or until the step ends (``loop.call_soon``)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_UP_TO:
                self._transport.write(held + data)
            else:
                self._transport.writelines((held, data))
        elif data[:7] == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.flush()
        self._transport.writelines(list_of_data)

    def flush(self) -> None:
        """Write the held head, if one is held."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    @property
    def held(self) -> bool:
        return self._held is not None

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._transport.get_write_buffer_size() + (0 if held is None else len(held))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


def held_head_protocol(
    wrap: Any = HeldHeadTransport,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol whose connections write through ``wrap(transport,
    loop)`` (:class:`HeldHeadTransport`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeldHeadProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(wrap(transport, self.loop))

    return HeldHeadProtocol


def http_protocol(parser: str) -> str | type[asyncio.Protocol]:
    """``uvicorn.Config``'s ``http`` for uvicorn's HTTP parser ``parser``: httptools' protocol
    with the held head (:func:`held_head_protocol`), any other as uvicorn names it."""
    return held_head_protocol() if parser == "httptools" else parser
