"""Stand-in vLLM replicas for the NGINX tests: tiny ASGI apps on real uvicorn threads.

Each replica answers every request with its own name (``{"replica": NAME}``, and on
``/v1/models`` a one-model list too); it can
be told to answer 503 (an engine that is starting or dead), and ``/stream`` sends one
SSE chunk, then waits until the test has seen it before sending the rest, so a test can
prove that nothing between them buffers the stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class StandInReplica:
    """One stand-in replica on 127.0.0.1 with a free port; ``start()``/``stop()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.hits = 0
        self.release_stream = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(self._app, interface="asgi3", log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"stand-in {self.name} did not start")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the port: connections to it are then refused."""
        self.release_stream.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self._sock.close()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.hits += 1
        if scope["path"] == "/stream" and self.status == 200:
            await self._stream(send)
            return
        answer: dict[str, Any] = {"replica": self.name}
        if scope["path"] == "/v1/models":  # a model list, so a gateway in front finds it ready
            answer |= {"object": "list", "data": [{"id": "tiny-llama", "object": "model"}]}
        body = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        released = await asyncio.to_thread(self.release_stream.wait, 10.0)
        last = b"data: second\n\ndata: [DONE]\n\n" if released else b"data: timeout\n\n"
        await send({"type": "http.response.body", "body": last})
