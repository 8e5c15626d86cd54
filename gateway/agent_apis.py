"""The agent APIs the gateway proxies beside chat: ``/v1/responses`` and ``/v1/messages``.

Each is one :class:`AgentApi` row: its body's fields (:mod:`gateway.body_fields`), where its
output cap is written (``max_output_tokens``, ``max_tokens``), its prompt bound
(:class:`gateway.agent_prompt.AgentPromptBound`), how its stream ends and is metered
(:class:`gateway.event_meter.EventMeter`) and the envelope its errors take (OpenAI's on
``/v1/responses``, Anthropic's on ``/v1/messages``). Admission, the relay and billing read
the row; everything else (auth, limits, reservation, timeouts, disconnect abort) is the
path every proxied route takes. :data:`AGENT_APIS` holds the rows by path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.agent_prompt import AgentPromptBound
from gateway.body_fields import (
    MAX_OUTPUT_TOKENS,
    MAX_TOKENS,
    MESSAGES_BODY,
    RESPONSES_BODY,
    BodyField,
    Count,
)
from gateway.errors import (
    GatewayError,
    anthropic_error_body,
    normalise_anthropic_error,
    normalise_upstream_error,
)
from gateway.event_meter import MESSAGES_ENDS, RESPONSES_ENDS, EventMeter
from gateway.prompt_tokens import ByteBound


def _openai_error_body(exc: GatewayError) -> bytes:
    return exc.body()


@dataclass(frozen=True, slots=True)
class AgentApi:
    """One agent API: what differs from chat, read by admission, the relay and billing."""

    path: str
    fields: tuple[BodyField, ...]
    output: Count  # the output cap's field: read, capped, written back
    turns: tuple[str, ...]  # its message-like fields, for the prompt bound
    ends: frozenset[bytes]  # the events that end its stream
    error_body: Callable[[GatewayError], bytes] = _openai_error_body
    # An upstream error body rewritten in the route's envelope (None: sent on as it is).
    upstream_error: Callable[[int, bytes], bytes | None] = normalise_upstream_error

    def read(self, data: dict[str, Any]) -> int | None:
        """Check every field of the body (``InvalidRequest`` names the bad one); return the
        output length asked for."""
        for body_field in self.fields:
            body_field.read(data)
        return self.output.read(data)

    def prompt_bound(self, overheads: ByteBound) -> AgentPromptBound:
        return AgentPromptBound(self.turns, overheads)

    def meter(self) -> EventMeter:
        return EventMeter(self.ends)

    def error_event(self, exc: GatewayError) -> bytes:
        """The event that ends a stream cut by the gateway (a timeout, a broken upstream):
        ``event: error`` with ``{"type": "error", "error": {...}}``, which the Anthropic SDK
        raises as an API error, and the OpenAI SDK too (a ``data`` with ``error``)."""
        envelope = self.error_body(exc)
        if not envelope.startswith(b'{"type"'):
            envelope = b'{"type": "error", ' + envelope[1:]
        return b"event: error\ndata: " + envelope + b"\n\n"


RESPONSES = AgentApi(
    path="/v1/responses",
    fields=RESPONSES_BODY,
    output=MAX_OUTPUT_TOKENS,
    turns=("instructions", "input"),
    ends=RESPONSES_ENDS,
)
MESSAGES = AgentApi(
    path="/v1/messages",
    fields=MESSAGES_BODY,
    output=MAX_TOKENS,
    turns=("system", "messages"),
    ends=MESSAGES_ENDS,
    error_body=anthropic_error_body,
    upstream_error=normalise_anthropic_error,
)
AGENT_APIS: dict[str, AgentApi] = {api.path: api for api in (RESPONSES, MESSAGES)}


def api_of(path: str) -> AgentApi | None:
    """The agent API serving ``path`` (``/v1/messages`` and what lies under it: its 404s
    answer in its envelope too), else ``None``."""
    api = AGENT_APIS.get(path)
    if api is None and path.startswith(MESSAGES.path + "/"):
        return MESSAGES
    return api
