"""Token caps: inject ``max_tokens`` when absent, clamp or refuse it when too high.

Without ``max_tokens`` vLLM generates up to ``max_model_len - prompt_len``
(docs/vllm-server.md#default-output-length), so the gateway always sends one. The cap is the lower
of the key's ``max_tokens`` and the global ``caps.max_tokens``; the default injected is
``caps.default_max_tokens``, itself capped.

What the client asked for is the lower of ``max_tokens`` and ``max_completion_tokens``
(``null`` counts as absent). The effective value is written to ``max_tokens`` always (what
``/v1/completions`` reads, and chat without ``max_completion_tokens``) and to
``max_completion_tokens`` too whenever the body names it, even as ``null`` (chat reads it
first): however vLLM reads the body, on either route, it reads the cap.
"""

from __future__ import annotations

from gateway.body import RequestBody
from gateway.errors import InvalidRequest
from gateway.settings import CapSettings


def effective_max_tokens(requested: int | None, key_cap: int | None, caps: CapSettings) -> int:
    cap = caps.max_tokens if not key_cap else min(caps.max_tokens, key_cap)
    if requested is None:
        return min(caps.default_max_tokens, cap)
    if requested <= cap:
        return requested
    if caps.over_cap == "reject":
        raise InvalidRequest(
            f"max_tokens {requested} is above this key's limit of {cap}", param="max_tokens"
        )
    return cap


def apply_token_cap(body: RequestBody, key_cap: int | None, caps: CapSettings) -> bool:
    """Write the effective cap into ``body.data``; return whether the body changed."""
    limit = effective_max_tokens(body.max_tokens, key_cap, caps)
    data = body.data
    changed = False
    for field in ("max_tokens", "max_completion_tokens"):
        if data.get(field) != limit and (field == "max_tokens" or field in data):
            data[field] = limit
            changed = True
    body.max_tokens = limit
    return changed
