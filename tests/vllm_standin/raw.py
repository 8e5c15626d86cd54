"""A raw TCP upstream, for answers no HTTP library would send: a dropped or reset
connection, silence, exact bytes (:class:`RawUpstream`, and the answers it sends)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

DROP = "drop"  # read the request, then close the connection without a word
RESET = "reset"  # read the request, then reset the connection (RST)
SILENT = "silent"  # read the request, then say nothing (the connection stays open)


@dataclass(frozen=True)
class Endless:
    """An answer that never ends: ``head``, then ``repeat`` sent again and again, as fast as
    the peer takes it (an upstream that floods) or every ``interval`` seconds (one that
    trickles), until the peer closes the connection."""

    head: bytes
    repeat: bytes
    interval: float = 0.0


# the exact bytes to send (then close), DROP / RESET / SILENT, or an endless answer
RawAnswer = bytes | str | Endless


def http_answer(
    status: int, body: bytes = b"", content_type: str = "application/json", **headers: str
) -> bytes:
    """A well-formed HTTP/1.1 answer that closes its connection."""
    fields = {"Content-Type": content_type, "Content-Length": str(len(body))} | headers
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"HTTP/1.1 {status} X\r\n{head}Connection: close\r\n\r\n".encode() + body


def sse_answer(events: int, event_bytes: int) -> bytes:
    """A 200 event stream of ``events`` content chunks of about ``event_bytes`` each,
    delimited by closing the connection (no length, as a proxy may send it)."""
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": "x" * event_bytes}}]}
    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head + event * events + b"data: [DONE]\n\n"


def endless_sse(event_bytes: int) -> Endless:
    """A 200 event stream of content chunks of about ``event_bytes`` each that never ends,
    the events sent in batches of about 64 KiB."""
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": "x" * event_bytes}}]}
    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return Endless(head, event * max(1, (64 << 10) // len(event)))


def healthy_raw_answers(model: str = "tiny-llama") -> dict[str, RawAnswer]:
    """What a ready replica answers, per path."""
    listing = {"object": "list", "data": [{"id": model, "object": "model"}]}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    completion: dict[str, Any] = {"id": "x", "object": "text_completion", "model": model}
    completion["usage"] = usage
    completion["choices"] = [{"index": 0, "text": "ok", "finish_reason": "length"}]
    return {
        "/health": http_answer(200),
        "/v1/models": http_answer(200, json.dumps(listing).encode()),
        "/v1/completions": http_answer(200, json.dumps(completion).encode()),
        "/v1/chat/completions": http_answer(200, json.dumps(completion).encode()),
    }


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class RawUpstream:
    """An upstream on a bare asyncio TCP server: per path, the answer of
    :data:`RawAnswer` (tests change ``answers`` between requests). One request per
    connection; every request is recorded in ``requests``; ``cut`` counts answers the
    peer stopped taking before their last byte (it closed or reset the connection)."""

    def __init__(self, answers: dict[str, RawAnswer] | None = None) -> None:
        self.answers = answers if answers is not None else healthy_raw_answers()
        self.requests: list[RawRequest] = []
        self.cut = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()

    def requests_to(self, path: str) -> list[RawRequest]:
        return [r for r in self.requests if r.path == path]

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            request = await self._read_request(reader)
            self.requests.append(request)
            await self._answer(reader, writer, self.answers.get(request.path, http_answer(404)))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RawRequest:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return RawRequest(method, path, headers, body)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: RawAnswer
    ) -> None:
        if answer == SILENT:
            await self._stopping.wait()
        elif answer == RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif isinstance(answer, Endless):
            writer.write(answer.head)
            try:
                while True:
                    writer.write(answer.repeat)
                    await writer.drain()
                    if answer.interval:
                        await asyncio.sleep(answer.interval)
            except ConnectionError:
                self.cut += 1
                raise
        elif isinstance(answer, bytes):
            writer.transport.set_write_buffer_limits(high=0)  # drain: until all is out
            writer.write(answer)
            writer.write_eof()  # after the buffered answer has gone out
            try:
                await writer.drain()
            except ConnectionError:
                self.cut += 1
                raise
            await reader.read()  # the peer sends nothing more: this ends once it closes
