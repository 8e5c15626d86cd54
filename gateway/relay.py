"""Usage accounting for relayed responses.

:class:`StreamMeter` sits on an SSE stream: it passes complete events through as they
arrive, picks vLLM's usage chunk (``"choices": []`` plus ``"usage"``, sent because the
gateway always asks for ``stream_options.include_usage``) and drops it again when the
client did not ask for it. When no usage chunk came (a disconnect or a timeout cut the
stream), it counts the content events relayed so far as completion tokens: vLLM sends
about one token per chunk, so this is an estimate, and it is the part the key is billed
for.

:func:`usage_from_json` finds ``usage`` in a non-streaming answer without parsing the
whole body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]"
_USAGE_KEY = b'"usage"'
_DECODER = json.JSONDecoder()


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_mapping(cls, usage: object) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens", 0)
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(prompt, completion or 0)


class StreamMeter:
    """Feed it upstream bytes; it returns what to send on and remembers the usage."""

    __slots__ = ("_keep_usage", "_pending", "content_events", "usage")

    def __init__(self, keep_usage: bool) -> None:
        self._keep_usage = keep_usage
        self._pending = b""
        self.content_events = 0
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(_EVENT_END)
        if end < 0:
            self._pending = data
            return b""
        end += len(_EVENT_END)
        complete, self._pending = data[:end], data[end:]
        events = complete.count(_EVENT_END)
        if _DONE in complete:
            events -= 1
        if _USAGE_KEY in complete:
            complete, usage_events = self._take_usage(complete)
            events -= usage_events
        self.content_events += events
        return complete

    def flush(self) -> bytes:
        """Whatever incomplete event is left when the upstream ends the stream."""
        rest, self._pending = self._pending, b""
        return rest

    def _take_usage(self, complete: bytes) -> tuple[bytes, int]:
        kept: list[bytes] = []
        found = 0
        for event in complete.split(_EVENT_END)[:-1]:
            usage = _usage_event(event)
            if usage is None:
                kept.append(event + _EVENT_END)
                continue
            found += 1
            self.usage = usage
            if self._keep_usage:
                kept.append(event + _EVENT_END)
        return b"".join(kept), found

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage else self.content_events


def _usage_event(event: bytes) -> Usage | None:
    """The usage of a final usage-only chunk (``choices`` empty), else ``None``."""
    payload = event.strip()
    if not payload.startswith(b"data:"):
        return None
    try:
        parsed = json.loads(payload[5:])
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("choices"):
        return None
    return Usage.from_mapping(parsed.get("usage"))


def usage_from_json(body: bytes) -> Usage | None:
    """``usage`` of a JSON answer; reads from the last ``"usage":`` on, not the whole body."""
    start = body.rfind(_USAGE_KEY)
    if start < 0:
        return None
    text = body[start + len(_USAGE_KEY) :].decode(errors="replace").lstrip()
    if not text.startswith(":"):
        return None
    try:
        value, _ = _DECODER.raw_decode(text[1:].lstrip())
    except ValueError:
        return None
    return Usage.from_mapping(value)
