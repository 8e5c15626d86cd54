"""The vLLM stand-in: one fake vLLM server for every test that needs one.

:class:`ScriptedUpstream` answers as vLLM's OpenAI-compatible server does, on a real
loopback socket (aiohttp): ``GET /health``, ``GET /v1/models`` (behind ``--api-key`` when
the script names one, as vLLM guards its ``/v1`` paths), ``GET /metrics`` (the scheduler
gauges a load-aware router reads), and chat completions, completions and embeddings, whole
or streamed, with ``usage`` as vLLM sends it. What it answers is a :class:`Script` that a
test changes between requests; its faults (statuses, a slow first byte or health answer,
a stalled or broken stream, no usage) are options of the script:

    async with ScriptedUpstream(Script(chunks=8, chunk_delay=0.05)) as upstream:
        ...  # point the gateway at upstream.url; upstream.bodies holds what it was sent

    with standin_in_thread(Script(api_key="k", models=["tiny-llama"])) as upstream:
        httpx.get(f"{upstream.url}/v1/models", headers={"Authorization": "Bearer k"})

For answers no HTTP library would send (a dropped or reset connection, silence, exact
bytes), :class:`RawUpstream` serves a bare TCP socket; :class:`WholeAnswer` is an answer
already in memory, for fake clients that stand in for a replica without any socket.

``bench/upstream.py`` stays a stand-alone script of its own: the benchmarks run it as a
separate process pinned to one CPU, with the standard library only, so that it costs far
less than the proxy under test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web


class WholeAnswer:
    """An upstream answer already in memory (``gateway.client.UpstreamResponse``), for fake
    clients that stand in for a replica."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    async def read(self) -> bytes:
        return self.body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Script:
    """How the upstream answers; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["tiny-llama"])
    chunks: int = 4
    chunk_delay: float = 0.0
    head_delay: float = 0.0  # before the response head (time to first byte)
    stall_after: int | None = None  # stream: after N chunks, wait for ``resume``
    break_after: int | None = None  # stream: drop the connection after N chunks
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    error_body: dict[str, Any] | None = None  # the body sent with ``statuses``
    health_status: int = 200
    prompt_tokens: int = 7
    # As vLLM: usage on every chunk when stream_options asks for continuous_usage_stats.
    continuous_usage: bool = False
    tokens_per_chunk: int = 1  # completion tokens each chunk stands for (vLLM stream_interval)
    answer_usage: bool = True  # send usage at all (False: an upstream that never does)
    answer_extra: dict[str, Any] = field(default_factory=dict)  # fields after usage
    # As vLLM's --api-key: /v1 paths answer 401 without "Authorization: Bearer <api_key>".
    api_key: str | None = None
    models_status: int = 200  # the /v1/models answer's status
    health_delays: dict[int, float] = field(default_factory=dict)  # n-th /health (from 1): wait
    running: float = 0.0  # /metrics: vllm:num_requests_running
    waiting: float = 0.0  # /metrics: vllm:num_requests_waiting
    kv_cache_usage: float = 0.1  # /metrics: vllm:kv_cache_usage_perc
    start_time: float | None = None  # /metrics: process_start_time_seconds (a restart: a new one)
    name: str | None = None  # a replica's name, echoed as "replica" in its JSON answers
    down_status: int | None = None  # every path answers this (503: an engine starting or dead)


class ScriptedUpstream:
    """An OpenAI-compatible upstream that does what its :class:`Script` says."""

    def __init__(
        self, script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.script = script or Script()
        self.host, self.port = host, port  # port 0: a free one, known once started
        self.bodies: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []  # as received, before any JSON parse
        self.closed_early = 0  # connections the gateway closed before the answer ended
        self.finished = 0
        self.health_answers = 0
        self.hits = 0  # every request, on any path
        self.resume = threading.Event()  # set: a stream stalled by ``stall_after`` goes on
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        """``host:port``, as an NGINX upstream or a Prometheus target names it."""
        return self.url.removeprefix("http://")

    async def start(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/embeddings", self._embed)
        app.middlewares.append(self._gate)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def __aenter__(self) -> ScriptedUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop serving and close the port: connections to it are then refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _named(self, answer: dict[str, Any]) -> dict[str, Any]:
        return answer | {"replica": self.script.name} if self.script.name else answer

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts every request; a replica that is down answers ``down_status`` on every
        path; with ``api_key``, /v1 paths answer 401 without the bearer (as vLLM)."""
        self.hits += 1
        if self.script.down_status is not None:
            await request.read()
            status = self.script.down_status
            error = {"error": {"message": "down", "type": "X", "param": None, "code": status}}
            return web.json_response(self._named(error), status=status)
        key = self.script.api_key
        authorized = request.headers.get("Authorization") == f"Bearer {key}"
        if key and request.path.startswith("/v1/") and not authorized:
            return web.json_response({"error": "Unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.Request) -> web.Response:
        self.health_answers += 1
        delay = self.script.health_delays.get(self.health_answers)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=self.script.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "max_model_len": 256} for m in self.script.models]
        listing = self._named({"object": "list", "data": data})
        return web.json_response(listing, status=self.script.models_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        model = self.script.models[0] if self.script.models else ""
        labels = f'{{engine="0",model_name="{model}"}}'
        text = (
            f"vllm:num_requests_running{labels} {self.script.running}\n"
            f"vllm:num_requests_waiting{labels} {self.script.waiting}\n"
            f"vllm:kv_cache_usage_perc{labels} {self.script.kv_cache_usage}\n"
        )
        if self.script.start_time is not None:
            text += f"process_start_time_seconds {self.script.start_time}\n"
        return web.Response(text=text)

    async def _embed(self, request: web.Request) -> web.Response:
        self.raw_bodies.append(await request.read())
        self.bodies.append(await request.json())
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return web.json_response(self._named({"object": "list", "data": [], "usage": usage}))

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.raw_bodies.append(await request.read())
        body = await request.json()
        self.bodies.append(body)
        if self.script.statuses:
            status = self.script.statuses.pop(0)
            error = {"error": {"message": "scripted", "type": "X", "param": None, "code": status}}
            return web.json_response(self._named(self.script.error_body or error), status=status)
        try:
            if self.script.head_delay:
                await asyncio.sleep(self.script.head_delay)
            if body.get("stream"):
                return await self._stream(request, body)
            return self._whole(body)
        except asyncio.CancelledError:
            self.closed_early += 1
            raise

    def _usage(self, completion: int) -> dict[str, int]:
        prompt = self.script.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _whole(self, body: dict[str, Any]) -> web.Response:
        completion = min(self.script.chunks, body.get("max_tokens") or self.script.chunks)
        self.finished += 1
        message = {"role": "assistant", "content": "tok " * completion}
        answer = {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
            "usage": self._usage(completion),
            **self.script.answer_extra,
        }
        if not self.script.answer_usage:
            del answer["usage"]
        return web.json_response(self._named(answer))

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        count = min(self.script.chunks, body.get("max_tokens") or self.script.chunks)
        options = body.get("stream_options") or {}
        continuous = self.script.continuous_usage and options.get("continuous_usage_stats")
        per_chunk = self.script.tokens_per_chunk
        for i in range(count):
            while self.script.stall_after is not None and i >= self.script.stall_after:
                if self.resume.is_set():
                    break
                await asyncio.sleep(0.01)  # stalled: the connection stays open
            if self.script.break_after is not None and i >= self.script.break_after:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(3600)
            chunk: dict[str, Any] = {
                "id": "x",
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
            }
            if continuous and options.get("include_usage") and self.script.answer_usage:
                chunk["usage"] = self._usage((i + 1) * per_chunk)
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.script.chunk_delay:
                await asyncio.sleep(self.script.chunk_delay)
        if options.get("include_usage") and self.script.answer_usage:
            final = {"id": "x", "choices": [], "usage": self._usage(count * per_chunk)}
            await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.finished += 1
        return response


class AsyncServer(Protocol):
    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


ServerT = TypeVar("ServerT", bound=AsyncServer)


class InThread(Generic[ServerT]):
    """A server (:class:`ScriptedUpstream`, :class:`RawUpstream`) on an event loop of its
    own in a thread, for synchronous tests: ``with InThread(server) as server:``. Stopped
    when the block ends, or before by :meth:`stop` (a replica that dies: its port closes)."""

    def __init__(self, server: ServerT) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running = False

    def __enter__(self) -> ServerT:
        self._thread.start()
        self._running = True
        try:
            self._run(self.server.__aenter__())
        except BaseException:
            self.stop()
            raise
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            self._run(self.server.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _run(self, step: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(step, self._loop).result(10)


def standin_in_thread(
    script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> InThread[ScriptedUpstream]:
    """The stand-in in a thread, for synchronous clients: ``with standin_in_thread(s) as up:``."""
    return InThread(ScriptedUpstream(script, host=host, port=port))


# --- A raw TCP upstream, for answers no HTTP library would send -------------------------

DROP = "drop"  # read the request, then close the connection without a word
RESET = "reset"  # read the request, then reset the connection (RST)
SILENT = "silent"  # read the request, then say nothing (the connection stays open)

RawAnswer = bytes | str  # the exact bytes to send (then close), or DROP / RESET / SILENT


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
