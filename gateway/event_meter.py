"""Usage metering of the agent APIs' streams: SSE events named by an ``event:`` line.

``/v1/responses`` and ``/v1/messages`` stream typed events, not chat chunks, and end with
no ``data: [DONE]``; what vLLM sends (measured here against vLLM's CPU build, 2026-12-06,
``curl -N`` on each route with the tiny model):

- Responses: ``response.created`` and ``response.in_progress`` (``"usage": null``), item and
  part events, ``response.output_text.delta`` (one or more tokens each), ..., and last
  ``response.completed`` whose ``response.usage`` holds ``input_tokens`` and
  ``output_tokens`` (also when ``max_output_tokens`` cut it: ``status: incomplete``);
  ``response.incomplete``, ``response.failed`` and ``error`` end a stream too.
- Messages: ``message_start`` (``message.usage.input_tokens``, ``output_tokens: 0``),
  ``content_block_start``/``_delta``/``_stop``, ``message_delta`` (the final ``usage``),
  ``message_stop``; ``error`` ends a stream too.

:class:`EventMeter` passes complete events through untouched (the client asked for every
one of them) and reads, from the few that carry ``"usage"`` (parsed: one to three a stream),
the prompt tokens and the output tokens. ``done`` is set by the stream's last event, so a
stream that ends before it is a cut one (:mod:`gateway.relay`). A cut stream is billed the
prompt tokens reported (``message_start``), else the estimate (:mod:`gateway.billing`), and
the output tokens reported or the delta events relayed, whichever is more: each delta holds
at least one token.
"""

from __future__ import annotations

import json

from gateway.usage_meter import Usage, agent_usage

_EVENT_END = b"\n\n"
_USAGE = b'"usage"'
_EVENT = b"event:"
_DATA = b"data:"
_DELTA = b"delta"
# Events that carry usage but no generated text.
_NOT_CONTENT = frozenset({b"message_delta"})
# Where an event's usage object is: at the top (message_delta), in "message"
# (message_start), in "response" (response.completed and the other ends).
_HOLDERS = ("message", "response")


class EventMeter:
    """Feed it upstream bytes; it returns what to send on and remembers the usage.

    ``ends``: the names of the events that end a stream (:data:`RESPONSES_ENDS`,
    :data:`MESSAGES_ENDS`). Same reading interface as
    :class:`gateway.usage_meter.StreamMeter`: ``done``, ``reported``, ``prompt_tokens``,
    ``completion_tokens``, ``content_events``."""

    __slots__ = ("_ends", "_output", "_pending", "_prompt", "content_events", "done", "usage")

    def __init__(self, ends: frozenset[bytes]) -> None:
        self._ends = ends
        self._pending = b""
        self._prompt: int | None = None  # reported before the end (message_start)
        self._output = 0  # output tokens reported before the end
        self.content_events = 0  # delta events relayed
        self.done = False
        self.usage: Usage | None = None  # the final usage (an end event's, message_delta's)

    def feed(self, chunk: bytes) -> bytes:
        """The complete events of what came so far, passed on as they are (the rest waits)."""
        events, ended, self._pending = (self._pending + chunk).rpartition(_EVENT_END)
        if not ended:
            return b""
        for event in events.split(_EVENT_END):
            self._event(event.lstrip(b"\r\n"))
        return events + ended

    def flush(self) -> bytes:
        """Whatever incomplete event is left when the upstream ends the stream."""
        rest, self._pending = self._pending, b""
        return rest

    @property
    def reported(self) -> bool:
        return self.usage is not None or self._prompt is not None

    @property
    def prompt_tokens(self) -> int | None:
        return self.usage.prompt_tokens if self.usage is not None else self._prompt

    @property
    def completion_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.completion_tokens
        return max(self._output, self.content_events)

    def _event(self, event: bytes) -> None:
        name = b""
        if event.startswith(_EVENT):
            line_end = event.find(b"\n")
            name = event[len(_EVENT) : line_end if line_end >= 0 else len(event)].strip()
        if name in self._ends:
            self.done = True
        elif _DELTA in name and name not in _NOT_CONTENT:
            self.content_events += 1
        if _USAGE in event:
            self._read_usage(name, event)

    def _read_usage(self, name: bytes, event: bytes) -> None:
        at = event.find(_DATA)
        try:
            parsed = json.loads(event[at + len(_DATA) :]) if at >= 0 else None
        except (ValueError, RecursionError):
            return
        if not isinstance(parsed, dict):
            return
        usage = parsed.get("usage")
        for holder in _HOLDERS:
            inner = parsed.get(holder)
            if usage is None and isinstance(inner, dict):
                usage = inner.get("usage")
        read = agent_usage(usage) if isinstance(usage, dict) else None
        if read is None:
            return
        if name in self._ends or name in _NOT_CONTENT:
            self.usage = read
        else:  # message_start: the prompt, before any output
            self._prompt = read.prompt_tokens
            self._output = max(self._output, read.completion_tokens)


RESPONSES_ENDS = frozenset(
    {b"response.completed", b"response.incomplete", b"response.failed", b"error"}
)
MESSAGES_ENDS = frozenset({b"message_stop", b"error"})
