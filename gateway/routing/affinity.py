"""The prefix-affinity key of a request: a hash of its leading content. Pure.

vLLM's prefix cache reuses the KV blocks of a prompt's *leading* tokens, so requests that
begin alike should meet on one replica. The key is the model and the first
``prefix_chars`` characters of the conversation for ``/v1/chat/completions``: the leading
system messages when they have ``min_prefix_chars`` (a tenant's prompt: its users' turns
then share its replica), else each message's role and text in order (the first turns: a
conversation stays together), the same for the agent APIs, whose ``system`` (``/v1/messages``)
or ``instructions`` (``/v1/responses``) lead as a system message; for ``/v1/completions`` the prompt
(its first element for a batch; token ids as text) for ``/v1/completions``. Fewer than
``min_prefix_chars`` such characters give no key: nothing worth a cache, so the request
goes where the load is least. Embeddings have no key.

    >>> body = {"model": "m", "messages": [{"role": "system", "content": "You are ..."}]}
    >>> prefix_key(body, "/v1/chat/completions", prefix_chars=2048, min_prefix_chars=4) > 0
    True

Read from the body admission parsed (no second parse), once per request, at admission:
the key travels in the request's record (``Admitted.route_key``). It is a 64-bit int, so
the router holds no state per key: memory does not grow with tenants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.routing.ring import key_hash

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"
_PATHS = (CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH, MESSAGES_PATH)
# The agent APIs' leading instructions: rendered first, as a system message (by vLLM too).
_LEADING = {RESPONSES_PATH: ("instructions", "input"), MESSAGES_PATH: ("system", "messages")}
_SYSTEM_ROLES = ("system", "developer")


def prefix_key(
    data: Mapping[str, Any], path: str, *, prefix_chars: int, min_prefix_chars: int
) -> int | None:
    """The affinity key of the parsed body ``data``, or ``None`` (no leading content worth
    one)."""
    if path not in _PATHS:
        return None
    if path != COMPLETIONS_PATH:
        messages = _conversation(data, path)
        text = _leading_messages(messages, prefix_chars, min_prefix_chars)
    else:
        text = _leading_prompt(data.get("prompt"), prefix_chars)
    if text is None or len(text) < min_prefix_chars:
        return None
    return key_hash(f"{data.get('model')}\x00{text[:prefix_chars]}")


def _conversation(data: Mapping[str, Any], path: str) -> Any:
    """The body's messages in chat's shape: chat's own; an agent body's instructions
    (``system``, ``instructions``) as a leading system message, then its messages or
    items (a Responses ``input`` string as one user message)."""
    if path == CHAT_PATH:
        return data.get("messages")
    lead, turns = _LEADING[path]
    messages = data.get(turns)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    system = data.get(lead)
    if system is None or not isinstance(messages, list):
        return messages
    return [{"role": "system", "content": system}, *messages]


def _leading_messages(messages: Any, limit: int, enough: int) -> str | None:
    """The leading system (and developer) messages when they are ``enough`` characters --
    a tenant's shared prompt, whatever its users ask -- else the first messages in order,
    so that a conversation without one stays together."""
    if not isinstance(messages, list):
        return None
    parts: list[str] = []
    size = 0
    system_only = True
    for message in messages:
        if size >= limit:
            break
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if system_only and role not in _SYSTEM_ROLES:
            if parts and size >= enough:
                break
            system_only = False
        part = f"{role}\n{_text(message.get('content'))}\x00"
        parts.append(part)
        size += len(part)
    return "".join(parts)


def _text(content: Any) -> str:
    """A message's text: the string, or its text parts joined (media parts as their type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                pieces.append(text if isinstance(text, str) else f"<{part.get('type')}>")
        return "".join(pieces)
    return ""


def _leading_prompt(prompt: Any, limit: int) -> str | None:
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str):
        return prompt[:limit]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt[:limit]):
        return " ".join(map(str, prompt[: max(limit // 4, 1)]))  # ~4 characters a token
    return None
