"""The body as admission reads it from the ASGI ``receive``: its parts, the size limit, the
rest of a refused body, a client that hangs up, and the headers read from the scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from starlette.requests import Request

from gateway.admission import header, read_body
from gateway.errors import ClientGone, PayloadTooLarge

Message = dict[str, object]


def request_of(
    messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[Request, list[Message]]:
    """A request whose ``receive`` hands over ``messages`` in order; the list returned holds
    those not yet received (what the gateway left unread)."""
    left = list(messages)

    async def receive() -> Message:
        return left.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or []}
    return Request(scope, receive), left


def part(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def refused(read: Callable[[], Awaitable[bytes]]) -> PayloadTooLarge:
    with pytest.raises(PayloadTooLarge) as caught:
        await read()
    return caught.value


async def test_the_body_is_its_parts_joined_and_nothing_past_its_end_is_read() -> None:
    request, left = request_of(
        [
            part(b'{"a":', True),
            {"type": "other"},
            part(b"", True),
            part(b" 1}", False),
            part(b"x", False),
        ]
    )
    assert await read_body(request, 100) == b'{"a": 1}'
    assert left == [part(b"x", False)]


async def test_one_part_and_no_part() -> None:
    request, _ = request_of([part(b"{}", False)])
    assert await read_body(request, 2) == b"{}"
    request, _ = request_of([{"type": "http.request"}])
    assert await read_body(request, 2) == b""


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    request, left = request_of([part(b"x" * 50, False)], [(b"content-length", b"50")])
    error = await refused(lambda: read_body(request, 30))
    assert "connection" not in error.headers  # the rest (within twice the limit) was drained
    assert left == []
    request, left = request_of([part(b"x" * 50, False)], [(b"content-length", b"50")])
    error = await refused(lambda: read_body(request, 20))
    assert error.headers["connection"] == "close"  # over twice the limit: not drained
    assert left == [part(b"x" * 50, False)]


async def test_a_body_found_over_the_limit_has_its_rest_drained() -> None:
    request, left = request_of([part(b"x" * 8, True), part(b"x" * 8, True), part(b"x", False)])
    error = await refused(lambda: read_body(request, 10))
    assert "connection" not in error.headers and left == []
    request, left = request_of([part(b"x" * 12, False), part(b"next", False)])
    error = await refused(lambda: read_body(request, 10))
    assert "connection" not in error.headers  # its last part: nothing more is read
    assert left == [part(b"next", False)]
    request, left = request_of([part(b"x" * 12, True), part(b"x" * 12, True), part(b"y", False)])
    error = await refused(lambda: read_body(request, 10))
    assert error.headers["connection"] == "close"  # past twice the limit: the rest is left
    assert left == [part(b"y", False)]


async def test_a_client_that_hangs_up_is_gone_with_what_it_sent() -> None:
    request, _ = request_of([part(b"x" * 7, True), {"type": "http.disconnect"}])
    with pytest.raises(ClientGone, match="after 7 bytes"):
        await read_body(request, 100)
    request, _ = request_of([part(b"x" * 12, True), {"type": "http.disconnect"}])
    with pytest.raises(ClientGone, match="after 12 bytes"):
        await read_body(request, 10)  # while its refused rest is drained


def test_a_header_is_its_first_value_decoded_as_latin_1() -> None:
    scope = {"headers": [(b"x-api-key", b"k\xe9"), (b"authorization", b"a"), (b"x-api-key", b"b")]}
    assert header(scope, b"x-api-key") == "k\u00e9"
    assert header(scope, b"authorization") == "a"
    assert header(scope, b"content-length") == ""
