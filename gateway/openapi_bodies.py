"""Request-body schemas for the OpenAPI document (what schemathesis fuzzes against).

Built from :mod:`gateway.body_fields`, the fields the parser checks, so the document admits
only what :func:`gateway.body.parse_body` accepts and names every form it bills (content
parts, token-id prompts, batches). Everything else passes through to vLLM.
"""

from __future__ import annotations

from typing import Any

from gateway.body_fields import (
    CHAT_BODY,
    COMPLETIONS_BODY,
    EMBEDDINGS_BODY,
    MESSAGES_BODY,
    RESPONSES_BODY,
    BodyField,
    body_schema,
)


def _body(fields: tuple[BodyField, ...]) -> dict[str, Any]:
    schema = body_schema(fields)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


CHAT_COMPLETIONS = _body(CHAT_BODY)
COMPLETIONS = _body(COMPLETIONS_BODY)
EMBEDDINGS = _body(EMBEDDINGS_BODY)
RESPONSES = _body(RESPONSES_BODY)
MESSAGES = _body(MESSAGES_BODY)
