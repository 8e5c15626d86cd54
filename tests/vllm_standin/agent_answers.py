"""What vLLM answers on its agent APIs, ``/v1/responses`` and ``/v1/messages``: the shapes
the stand-in writes, copied from vLLM's CPU build with the tiny model (``curl`` on each route,
whole and ``stream: true``, 2026-12-06), trimmed to the members a client or the gateway reads.

Streams are named events (``event: NAME`` then ``data: {...}``), with no ``data: [DONE]``:

- Responses: ``response.created``, ``response.in_progress`` (``"usage": null``),
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` a chunk, the ``.done`` events, then ``response.completed``
  with ``response.usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``);
- Messages: ``message_start`` (``message.usage``: the input tokens, 0 output),
  ``content_block_start``, one ``content_block_delta`` a chunk, ``content_block_stop``,
  ``message_delta`` (the final ``usage``), ``message_stop``.

Errors: ``/v1/responses`` in the OpenAI envelope; ``/v1/messages`` in Anthropic's, with
vLLM's exception name as the type (``NotFoundError``), except the request validation errors,
which vLLM answers there in the OpenAI envelope.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _responses_usage(prompt: int, output: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


def _response(model: str, text: str, usage: dict[str, Any] | None, status: str) -> dict[str, Any]:
    output = [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": model,
        "status": status,
        "output": output if text else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def _text(count: int) -> str:
    return "".join(f"t{i} " for i in range(count))


def _responses_whole(model: str, count: int, usage: dict[str, Any] | None) -> dict[str, Any]:
    return _response(model, _text(count), usage, "completed")


def _responses_opening(model: str, prompt: int) -> list[bytes]:
    started = _response(model, "", None, "in_progress")
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        event("response.created", {"type": "response.created", "response": started}),
        event("response.in_progress", {"type": "response.in_progress", "response": started}),
        event(
            "response.output_item.added",
            {"type": "response.output_item.added", "item": item | {"content": []}},
        ),
        event(
            "response.content_part.added",
            {"type": "response.content_part.added", "item_id": "msg_1", "part": part},
        ),
    ]


def _responses_delta(i: int) -> bytes:
    delta = {"type": "response.output_text.delta", "item_id": "msg_1", "delta": f"t{i} "}
    return event("response.output_text.delta", delta)


def _responses_closing(model: str, count: int, usage: dict[str, Any] | None) -> list[bytes]:
    done = _response(model, _text(count), usage, "completed")
    return [
        event("response.output_text.done", {"type": "response.output_text.done"}),
        event("response.completed", {"type": "response.completed", "response": done}),
    ]


def _openai_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}


def _messages_usage(prompt: int, output: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "output_tokens": output}


def _message(model: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}] if text else [],
        "model": model,
        "stop_reason": "max_tokens",
        "usage": usage,
    }


def _messages_whole(model: str, count: int, usage: dict[str, Any] | None) -> dict[str, Any]:
    answer = _message(model, _text(count), usage)
    if usage is None:
        del answer["usage"]
    return answer


def _messages_opening(model: str, prompt: int) -> list[bytes]:
    start = _message(model, "", _messages_usage(prompt, 0)) | {"stop_reason": None}
    block = {"type": "content_block_start", "content_block": {"type": "text", "text": ""}}
    return [
        event("message_start", {"type": "message_start", "message": start}),
        event("content_block_start", block | {"index": 0}),
    ]


def _messages_delta(i: int) -> bytes:
    delta = {"type": "text_delta", "text": f"t{i} "}
    return event("content_block_delta", {"type": "content_block_delta", "delta": delta, "index": 0})


def _messages_closing(model: str, count: int, usage: dict[str, Any] | None) -> list[bytes]:
    stop: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
    }
    if usage is not None:
        stop["usage"] = usage
    return [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", stop),
        event("message_stop", {"type": "message_stop"}),
    ]


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "BadRequestError", "message": message}}


@dataclass(frozen=True)
class AgentShape:
    """One agent API's answers: its cap field, usage, whole answer, stream and errors."""

    cap_field: str
    usage: Callable[[int, int], dict[str, Any]]
    whole: Callable[[str, int, dict[str, Any] | None], dict[str, Any]]
    opening: Callable[[str, int], list[bytes]]
    delta: Callable[[int], bytes]
    closing: Callable[[str, int, dict[str, Any] | None], list[bytes]]
    error: Callable[[int, str], dict[str, Any]]


AGENT_SHAPES = {
    "/v1/responses": AgentShape(
        "max_output_tokens",
        _responses_usage,
        _responses_whole,
        _responses_opening,
        _responses_delta,
        _responses_closing,
        _openai_error,
    ),
    "/v1/messages": AgentShape(
        "max_tokens",
        _messages_usage,
        _messages_whole,
        _messages_opening,
        _messages_delta,
        _messages_closing,
        _anthropic_error,
    ),
}
