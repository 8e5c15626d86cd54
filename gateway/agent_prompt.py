"""The prompt bound of the agent APIs' bodies: ``/v1/responses`` and ``/v1/messages``.

vLLM turns both into a chat request before its template renders it (its
``entrypoints/anthropic/serving.py`` and ``entrypoints/openai/responses``): ``system`` or
``instructions`` a system message, each message or input item a chat message, content
blocks and items text parts, tool calls or tool results, ``tools`` chat tools. Rather than
repeat those conversions (they change between vLLM releases), :class:`AgentPromptBound`
bounds what any of them can render, in :class:`gateway.prompt_tokens.ByteBound`'s terms:

- a text (a string, a ``text`` block or part) counts its ``B`` plus 1, as chat's parts do
  (the proof is ByteBound's);
- an image block or part counts :data:`gateway.body.MEDIA_TOKENS` of its media, as chat's;
- a message (an object with ``role``) counts its role and its content as above, plus the
  template's ``message_overhead``; the request ``request_overhead`` once;
- any other block or item (a tool use or result, a function call or its output, reasoning)
  counts twice the ``B`` of its JSON (indented by 4, :func:`gateway.utf8_length.json_bytes`)
  plus :data:`STRUCTURE_SLACK`, its ``content`` counted as a message's: a rendering shows each
  of its fields once, as text or as JSON, at worst again escaped inside a JSON string
  (``arguments``), which at most doubles a byte; a tool counts the same, wrapped as the chat
  tool vLLM makes of it.

Exact counting with the model's tokenizer, as chat has, would mean repeating vLLM's
conversion for each release; the bound only reserves more, and the settle bills what vLLM
reports. Measured: docs/gateway-bodies.md#the-agent-apis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.body import MEDIA_TOKENS
from gateway.deadline import Deadline
from gateway.prompt_tokens import ByteBound
from gateway.utf8_length import json_bytes, text_bytes

# What a block or item that is not text or media may add when rendered beyond its own
# fields (a name, an id, the template's wrapping of a tool call): tokens, at 1 a byte.
STRUCTURE_SLACK = 32
# Block and part types that are one image (Anthropic's, the Responses API's).
MEDIA_BLOCKS = {"image": "image", "input_image": "image", "input_audio": "audio"}
_TEXT_BLOCKS = frozenset({"text", "input_text", "output_text"})


@dataclass(frozen=True, slots=True)
class AgentPromptBound:
    """The bound of one agent body: ``turns`` names its message-like fields (a string or
    a list of blocks: ``system``, ``instructions``; a list of messages or items:
    ``messages``, ``input``) in the order vLLM renders them; ``tools`` its tool list."""

    turns: tuple[str, ...]
    overheads: ByteBound = field(default_factory=ByteBound)
    tools: str = "tools"

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        """The bound; like ByteBound, no tokenizer work, so ``deadline`` is not looked at."""
        total = self.overheads.request_overhead
        for name in self.turns:
            value = data.get(name)
            if isinstance(value, str):
                total += self.overheads.message_overhead + text_bytes(value) + 1
            elif isinstance(value, list):
                if name in ("messages", "input"):
                    total += sum(self._turn(item) for item in value)
                else:  # system as blocks: one message
                    total += self.overheads.message_overhead + _content(value)
        tools = data.get(self.tools)
        if isinstance(tools, list):
            total += sum(_structure({"type": "function", "function": tool}) for tool in tools)
        return max(1, total)

    def _turn(self, item: object) -> int:
        if isinstance(item, str):
            return self.overheads.message_overhead + text_bytes(item) + 1
        return self.overheads.message_overhead + _block(item)


def _content(content: object) -> int:
    """A message's content: a text, or a list of blocks."""
    if isinstance(content, str):
        return text_bytes(content) + 1
    if isinstance(content, list):
        return sum(_block(block) for block in content)
    return json_bytes(content)


def _block(block: object) -> int:
    if isinstance(block, str):
        return text_bytes(block) + 1
    if not isinstance(block, dict):
        return _structure(block)
    kind = block.get("type")
    media = MEDIA_BLOCKS.get(kind) if isinstance(kind, str) else None
    if media is not None:
        return MEDIA_TOKENS[media]
    text = block.get("text")
    if isinstance(text, str) and (kind is None or kind in _TEXT_BLOCKS):
        return text_bytes(text) + 1
    role = block.get("role")
    if isinstance(role, str) and kind in (None, "message"):
        return text_bytes(role) + _content(block.get("content"))
    if "content" in block:
        rest = {key: value for key, value in block.items() if key != "content"}
        return _structure(rest) + _content(block["content"])
    return _structure(block)


def _structure(value: object) -> int:
    return 2 * json_bytes(value) + STRUCTURE_SLACK
