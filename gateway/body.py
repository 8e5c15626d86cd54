"""Parse a client's JSON body once and keep only the fields the gateway acts on.

:func:`parse_body` validates ``model``, ``stream``, ``max_tokens`` /
``max_completion_tokens`` and ``stream_options`` (a clear :class:`InvalidRequest` for each
bad one) and estimates the prompt's tokens cheaply, as bytes / 4 of the text in
``messages`` / ``prompt`` / ``input``; the limiter reserves that estimate and settles with
the real usage afterwards. Every other field passes through untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators; a rough per-message overhead


@dataclass(slots=True)
class RequestBody:
    """The parsed body and the facts taken from it."""

    data: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    prompt_tokens_estimate: int


def parse_body(raw: bytes) -> RequestBody:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return RequestBody(
        data=data,
        model=model,
        stream=stream,
        max_tokens=_requested_max_tokens(data),
        include_usage=_include_usage(data),
        prompt_tokens_estimate=estimate_prompt_tokens(data),
    )


def _requested_max_tokens(data: dict[str, Any]) -> int | None:
    found: int | None = None
    for field in ("max_completion_tokens", "max_tokens"):
        value = data.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{field}' must be a positive integer", param=field)
        if value < 1:
            raise InvalidRequest(f"'{field}' must be at least 1, got {value}", param=field)
        found = value if found is None else min(found, value)
    return found


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    include = options.get("include_usage", False)
    if include is not None and not isinstance(include, bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean", param="stream_options"
        )
    return bool(include)


def estimate_prompt_tokens(data: dict[str, Any]) -> int:
    """bytes / 4 of the prompt text, plus a little per chat message; never below 1."""
    chars = 0
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in messages:
            chars += BYTES_PER_TOKEN * TOKENS_PER_MESSAGE
            if isinstance(message, dict):
                chars += _text_length(message.get("content"))
    for field in ("prompt", "input"):
        chars += _text_length(data.get(field))
    return max(1, chars // BYTES_PER_TOKEN)


def _text_length(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, int) and not isinstance(value, bool):
        return BYTES_PER_TOKEN  # a token id
    if isinstance(value, list):
        return sum(_text_length(item) for item in value)
    if isinstance(value, dict):
        return _text_length(value.get("text"))
    return 0


def encode_body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
