"""A cheap OpenAI-compatible stand-in upstream: raw asyncio, HTTP/1.1 keep-alive.

Serves just enough of vLLM's surface for proxy benchmarks and gateway tests:

- ``GET /health`` -> 200, empty body
- ``GET /v1/models`` -> one model
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: a fixed JSON answer with
  ``usage``; with ``"stream": true`` an SSE stream of ``--chunks`` chunks (chunked
  transfer encoding), then the usage chunk when ``stream_options.include_usage`` is set,
  then ``data: [DONE]``. A chat stream that also asks for ``continuous_usage_stats`` (as the
  vkit gateway asks for every stream) is written byte for byte as vLLM 0.32 writes it, usage
  on every chunk (:func:`vllm_events`).

It parses only the request line, ``Content-Length`` and the few JSON fields it needs, so
that it costs far less CPU than any proxy put in front of it.

Faults for soak runs (``bench/soak.py``), chosen by the request's ``user`` field, which a
proxy passes through: ``status-500`` and ``status-503`` answer that status with an error
envelope, ``drop`` closes the connection without a word, ``slow`` streams with
``--slow-chunk-ms`` between chunks. A body over 64 KiB is not parsed: ``stream`` and
``user`` are found by a pattern (``bench/soak_hostile.py`` sends 4 MiB ones).

    python bench/upstream.py --port 9000 [--chunks 16] [--chunk-delay-ms 0] [--model bench]
        [--slow-chunk-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class UpstreamConfig:
    """How the stand-in answers."""

    model: str = "bench"
    chunks: int = 16
    chunk_delay_s: float = 0.0
    prompt_tokens: int = 10
    slow_chunk_delay_s: float = 0.02


_PARSED_BODY_BYTES = 64 * 1024  # larger bodies are skimmed, not parsed
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USER = re.compile(rb'"user"\s*:\s*"([^"]*)"')
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def _head(status: int, content_type: str, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"content-type: {content_type}"]
    lines.append(
        f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def vllm_events(model: str, tokens: int, prompt_tokens: int, created: int) -> list[bytes]:
    """A chat stream of ``tokens`` tokens ("tok " each, cut by ``max_tokens``) byte for byte as
    vLLM 0.32's OpenAI server writes it with ``stream_options: {"include_usage": true,
    "continuous_usage_stats": true}`` (pydantic's ``model_dump_json(exclude_unset=True)``,
    compact): the role chunk (its usage followed by the first chunk's two null members), a
    chunk per token (the last with its finish reason), each with its usage so far, the final
    ``"choices":[]`` usage chunk, ``data: [DONE]``."""
    head = f'{{"id":"chatcmpl-{0x5EED:016x}","object":"chat.completion.chunk","created":{created},'
    head += f'"model":{json.dumps(model)},"choices":'

    def usage(completion: int, details: bool = True) -> str:
        counts = f'"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens + completion},'
        counts += f'"completion_tokens":{completion}'
        return '"usage":{' + counts + (',"completion_tokens_details":null}' if details else "}")

    choice = '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    chunks = [
        choice
        + '"finish_reason":null}],'
        + usage(0)
        + ',"prompt_token_ids":null,"prompt_text":null'
    ]
    for done in range(1, tokens + 1):
        finish = '"length","stop_reason":null' if done == tokens else "null"
        choice = '[{"index":0,"delta":{"content":"tok "},"logprobs":null,'
        chunks.append(choice + f'"finish_reason":{finish},"token_ids":null}}],' + usage(done))
    chunks.append("[]," + usage(tokens, details=False))
    events = [f"data: {head}{chunk}}}\n\n".encode() for chunk in chunks]
    return [*events, b"data: [DONE]\n\n"]


def _json_response(status: int, payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _head(status, "application/json", len(body)) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StandInUpstream:
    """Builds the canned answers once and serves them from an asyncio server."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.requests_served = 0
        usage = {
            "prompt_tokens": config.prompt_tokens,
            "completion_tokens": config.chunks,
            "total_tokens": config.prompt_tokens + config.chunks,
        }
        self._usage = usage
        self._models = _json_response(
            200,
            {"object": "list", "data": [{"id": config.model, "object": "model"}]},
        )
        self._health = _head(200, "text/plain", 0)

    def _completion(self, chat: bool) -> bytes:
        choice: dict[str, object] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": "tok " * self.config.chunks}
        else:
            choice["text"] = "tok " * self.config.chunks
        payload = {
            "id": "cmpl-bench",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [choice],
            "usage": self._usage,
        }
        return _json_response(200, payload)

    def _stream_events(self, chat: bool, include_usage: bool) -> list[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        events = []
        for i in range(self.config.chunks):
            last = i == self.config.chunks - 1
            choice: dict[str, object] = {"index": 0, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = {"content": "tok "}
            else:
                choice["text"] = "tok "
            event = {"id": "cmpl-bench", "object": kind, "model": self.config.model}
            event["choices"] = [choice]  # type: ignore[assignment]
            events.append(b"data: " + json.dumps(event).encode() + b"\n\n")
        if include_usage:
            event = {"id": "cmpl-bench", "object": kind, "model": self.config.model}
            event["choices"] = []  # type: ignore[assignment]
            event["usage"] = self._usage  # type: ignore[assignment]
            events.append(b"data: " + json.dumps(event).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, header_block = head.partition(b"\r\n")
        method, path, _ = request_line.split(b" ", 2)
        length = 0
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests_served += 1
        if method == b"GET":
            writer.write(self._get(path))
        elif path in (b"/v1/chat/completions", b"/v1/completions"):
            await self._post(path == b"/v1/chat/completions", body, writer)
        else:
            writer.write(_json_response(404, {"error": {"message": "not found", "code": 404}}))
        await writer.drain()
        return True

    def _get(self, path: bytes) -> bytes:
        if path == b"/health":
            return self._health
        if path == b"/v1/models":
            return self._models
        return _json_response(404, {"error": {"message": "not found", "code": 404}})

    async def _post(self, chat: bool, body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(body) if len(body) <= _PARSED_BODY_BYTES else _skimmed(body)
        except ValueError:
            writer.write(_json_response(400, {"error": {"message": "bad json", "code": 400}}))
            return
        fault = request.get("user")
        if fault in ("status-500", "status-503"):
            status = int(fault[-3:])
            error = {"message": "scripted fault", "type": "X", "param": None, "code": status}
            writer.write(_json_response(status, {"error": error}))
            return
        if fault == "drop":
            raise ConnectionResetError("scripted drop")  # handle() closes the connection
        if not request.get("stream"):
            writer.write(self._completion(chat))
            return
        options = request.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        delay = self.config.slow_chunk_delay_s if fault == "slow" else self.config.chunk_delay_s
        writer.write(_head(200, "text/event-stream", None))
        if chat and include_usage and options.get("continuous_usage_stats"):
            config = self.config
            events = vllm_events(
                config.model, config.chunks, config.prompt_tokens, int(time.time())
            )
        else:
            events = self._stream_events(chat, include_usage)
        for event in events:
            if delay:
                await writer.drain()
                await asyncio.sleep(delay)
            writer.write(_chunk(event))
        writer.write(b"0\r\n\r\n")


def _skimmed(body: bytes) -> dict[str, object]:
    """The fields the stand-in reads, found without parsing a large body (a hostile one
    would otherwise cost the stand-in more CPU than the proxy in front of it)."""
    user = _USER.search(body)
    return {"stream": _STREAM.search(body) is not None, "user": user and user[1].decode()}


async def serve(config: UpstreamConfig, host: str, port: int) -> None:
    upstream = StandInUpstream(config)
    server = await asyncio.start_server(upstream.handle, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--slow-chunk-ms", type=float, default=20.0, help='for user "slow"')
    args = parser.parse_args()
    config = UpstreamConfig(
        model=args.model,
        chunks=args.chunks,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        slow_chunk_delay_s=args.slow_chunk_ms / 1000,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    main()
