""":class:`ScriptedUpstream`: vLLM's OpenAI-compatible server as its :class:`Script` says,
on a real loopback socket (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.vllm_standin.agent_answers import AGENT_SHAPES
from tests.vllm_standin.script import Script


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
        self.generated = 0  # completion tokens answered (vllm:generation_tokens_total)
        self.prompted = 0  # prompt tokens of the requests answered (vllm:prompt_tokens_total)
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
        app.router.add_post("/v1/responses", self._agent)
        app.router.add_post("/v1/messages", self._agent)
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
        data += [
            {"id": name, "object": "model", "root": f"/adapters/{name}", "parent": base}
            for name, base in self.script.adapters.items()
        ]
        listing = self._named({"object": "list", "data": data})
        return web.json_response(listing, status=self.script.models_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics_text())

    def metrics_text(self) -> str:
        """What ``GET /metrics`` answers now."""
        model = self.script.models[0] if self.script.models else ""
        labels = f'{{engine="0",model_name="{model}"}}'
        script = self.script
        running = max(script.running, 1.0) if script.hung else script.running
        generated = script.generation_tokens_total + self.generated
        prompted = script.prompt_tokens_total + self.prompted
        text = (
            f"vllm:num_requests_running{labels} {running}\n"
            f"vllm:num_requests_waiting{labels} {script.waiting}\n"
            f"vllm:kv_cache_usage_perc{labels} {script.kv_cache_usage}\n"
            f"vllm:generation_tokens_total{labels} {generated}\n"
            f"vllm:prompt_tokens_total{labels} {prompted}\n"
        )
        if self.script.start_time is not None:
            text += f"process_start_time_seconds {self.script.start_time}\n"
        return text

    async def _embed(self, request: web.Request) -> web.Response:
        self.raw_bodies.append(await request.read())
        self.bodies.append(await request.json())
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return web.json_response(self._named({"object": "list", "data": [], "usage": usage}))

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.raw_bodies.append(await request.read())
        body = await request.json()
        self.bodies.append(body)
        if self.script.hung:  # stuck mid-step: no answer, no token, until the server stops
            await asyncio.Event().wait()
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
        self.prompted += self.script.prompt_tokens
        self.generated += completion
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
        self.prompted += self.script.prompt_tokens

        def frame(i: int) -> bytes:
            chunk: dict[str, Any] = {
                "id": "x",
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
            }
            if continuous and options.get("include_usage") and self.script.answer_usage:
                chunk["usage"] = self._usage((i + 1) * per_chunk)
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        await self._chunks(request, response, count, frame)
        if options.get("include_usage") and self.script.answer_usage:
            final = {"id": "x", "choices": [], "usage": self._usage(count * per_chunk)}
            await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.finished += 1
        return response

    async def _chunks(
        self,
        request: web.Request,
        response: web.StreamResponse,
        count: int,
        frame: Callable[[int], bytes],
    ) -> None:
        """Write ``count`` content chunks (``frame(i)``) as the script paces, stalls or
        breaks them."""
        for i in range(count):
            while self.script.stall_after is not None and i >= self.script.stall_after:
                if self.resume.is_set():
                    break
                await asyncio.sleep(0.01)  # stalled: the connection stays open
            if self.script.break_after is not None and i >= self.script.break_after:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(3600)
            await response.write(frame(i))
            self.generated += self.script.tokens_per_chunk
            if self.script.chunk_delay:
                await asyncio.sleep(self.script.chunk_delay)

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        """``/v1/responses`` and ``/v1/messages`` as vLLM answers them (see
        ``tests/vllm_standin/agent_answers.py``): whole or streamed as named events, usage
        as ``input_tokens``/``output_tokens``, errors in the route's envelope."""
        self.raw_bodies.append(await request.read())
        body = await request.json()
        self.bodies.append(body)
        shape = AGENT_SHAPES[request.path]
        if self.script.hung:
            await asyncio.Event().wait()
        if self.script.statuses:
            status = self.script.statuses.pop(0)
            error = self.script.error_body or shape.error(status, "scripted")
            return web.json_response(self._named(error), status=status)
        try:
            if self.script.head_delay:
                await asyncio.sleep(self.script.head_delay)
            cap = body.get(shape.cap_field) or self.script.chunks
            count = min(self.script.chunks, cap)
            usage = shape.usage(self.script.prompt_tokens, count * self.script.tokens_per_chunk)
            if not self.script.answer_usage:
                usage = None
            self.prompted += self.script.prompt_tokens
            if not body.get("stream"):
                self.generated += count * self.script.tokens_per_chunk
                self.finished += 1
                answer = shape.whole(body["model"], count, usage) | self.script.answer_extra
                return web.json_response(self._named(answer))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in shape.opening(body["model"], self.script.prompt_tokens):
                await response.write(event)
            await self._chunks(request, response, count, shape.delta)
            for event in shape.closing(body["model"], count, usage):
                await response.write(event)
            await response.write_eof()
            self.finished += 1
            return response
        except asyncio.CancelledError:
            self.closed_early += 1
            raise
