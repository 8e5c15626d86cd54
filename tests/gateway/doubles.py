"""Test doubles for the gateway: a scripted upstream served by aiohttp on a real socket,
a dict key store and a limiter that records what the gateway reserves and settles."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import RateLimitExceeded


@dataclass
class Script:
    """How the upstream answers; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["tiny-llama"])
    chunks: int = 4
    chunk_delay: float = 0.0
    head_delay: float = 0.0  # before the response head (time to first byte)
    stall_after: int | None = None  # stream: stop sending (but keep open) after N chunks
    break_after: int | None = None  # stream: drop the connection after N chunks
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    error_body: dict[str, Any] | None = None  # the body sent with ``statuses``
    health_status: int = 200
    prompt_tokens: int = 7


class ScriptedUpstream:
    """An OpenAI-compatible upstream that does what its :class:`Script` says."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.bodies: list[dict[str, Any]] = []
        self.closed_early = 0  # connections the gateway closed before the answer ended
        self.finished = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/embeddings", self._embed)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aenter__(self) -> ScriptedUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.script.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "max_model_len": 256} for m in self.script.models]
        return web.json_response({"object": "list", "data": data})

    async def _embed(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return web.json_response({"object": "list", "data": [], "usage": usage})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if self.script.statuses:
            status = self.script.statuses.pop(0)
            error = {"error": {"message": "scripted", "type": "X", "param": None, "code": status}}
            return web.json_response(self.script.error_body or error, status=status)
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
        }
        return web.json_response(answer)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        count = min(self.script.chunks, body.get("max_tokens") or self.script.chunks)
        for i in range(count):
            if self.script.stall_after is not None and i >= self.script.stall_after:
                await asyncio.sleep(3600)
            if self.script.break_after is not None and i >= self.script.break_after:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(3600)
            chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.script.chunk_delay:
                await asyncio.sleep(self.script.chunk_delay)
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": "x", "choices": [], "usage": self._usage(count)}
            await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.finished += 1
        return response


@dataclass
class Key:
    """Shaped like gateway.key_store.ApiKey (the fields the gateway reads)."""

    name: str
    rpm: int = 1000
    tpm: int = 1_000_000
    concurrency: int = 100
    max_tokens: int | None = None
    models: list[str] = field(default_factory=list)
    enabled: bool = True


class DictKeyStore:
    def __init__(self, keys: dict[str, Key]) -> None:
        self.keys = keys

    def authenticate(self, secret: str) -> Key | None:
        return self.keys.get(secret)


@dataclass
class RecordedLease:
    reserved: int
    settled: list[int] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-remaining-tokens": str(1_000_000 - self.reserved)}

    async def settle(self, used_tokens: int) -> None:
        self.settled.append(used_tokens)


class RecordingLimiter:
    """Admits everything below ``refuse_above`` tokens and records every lease."""

    def __init__(self, refuse_above: int | None = None) -> None:
        self.refuse_above = refuse_above
        self.leases: list[RecordedLease] = []

    async def acquire(self, key: Key, tokens: int) -> RecordedLease:
        if self.refuse_above is not None and tokens > self.refuse_above:
            headers = {"x-ratelimit-limit-tokens": str(self.refuse_above)}
            raise RateLimitExceeded(
                "too many tokens", reason="tokens", retry_after=2.5, ratelimit_headers=headers
            )
        lease = RecordedLease(tokens)
        self.leases.append(lease)
        return lease
