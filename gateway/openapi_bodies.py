"""Request-body schemas for the OpenAPI document (what schemathesis fuzzes against).

They describe the fields the gateway checks; everything else passes through to vLLM.
"""

from __future__ import annotations

from typing import Any

_MAX_TOKENS = {"type": "integer", "minimum": 1}
_STREAM_OPTIONS = {
    "type": "object",
    "properties": {"include_usage": {"type": "boolean"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


CHAT_COMPLETIONS = _body(
    {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        "max_tokens": _MAX_TOKENS,
        "max_completion_tokens": _MAX_TOKENS,
        "stream": {"type": "boolean"},
        "stream_options": _STREAM_OPTIONS,
    },
    ["model", "messages"],
)

COMPLETIONS = _body(
    {
        "model": {"type": "string", "minLength": 1},
        "prompt": {"type": "string"},
        "max_tokens": _MAX_TOKENS,
        "stream": {"type": "boolean"},
        "stream_options": _STREAM_OPTIONS,
    },
    ["model", "prompt"],
)

EMBEDDINGS = _body(
    {
        "model": {"type": "string", "minLength": 1},
        "input": {"type": "string"},
    },
    ["model", "input"],
)
