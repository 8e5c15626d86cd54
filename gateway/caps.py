"""Token caps: inject ``max_tokens`` when absent, clamp or refuse it when too high.

Without ``max_tokens`` vLLM generates up to ``max_model_len - prompt_len``
(docs/vllm-server.md#default-output-length), so the gateway always sends one. The cap is the lower
of the key's ``max_tokens`` and the global ``caps.max_tokens``; the default injected is
``caps.default_max_tokens``, itself capped.

What the client asked for is the lower of ``max_tokens`` and ``max_completion_tokens``
(``null`` counts as absent). The effective value is written to ``max_tokens`` always (what
``/v1/completions`` reads, and chat without ``max_completion_tokens``) and to
``max_completion_tokens`` too whenever the body names it, even as ``null`` (chat reads it
first): however vLLM reads the body, on either route, it reads the cap. The agent APIs have
one output field each, capped the same way: ``max_output_tokens`` (``/v1/responses``) and
``max_tokens`` (``/v1/messages``, where Anthropic requires it: the gateway writes it in).

Fan-out (:func:`check_fan_out`): ``n``, ``best_of``, the prompts of a batch and the
completions of a request (prompts x ``max(n, best_of)``) each have a bound, the lower of the
key's (``max_n`` ... in the keys file) and the gateway's (``caps.max_n`` ...). A body over
one is refused with 400 naming the field, never clamped: a client that asked for 1000
choices and got 128 would read the answer wrong. The limiter reserves ``max_tokens`` for
every completion that passes (:attr:`gateway.body.RequestBody.reservation`).
"""

from __future__ import annotations

from typing import Protocol

from gateway.body import RequestBody
from gateway.errors import InvalidRequest
from gateway.settings import CapSettings

# Where the cap is written: the first field always, the others when the body names them.
CHAT_CAP_FIELDS = ("max_tokens", "max_completion_tokens")


def effective_max_tokens(
    requested: int | None, key_cap: int | None, caps: CapSettings, name: str = "max_tokens"
) -> int:
    """``name``: the route's output field, as the refusal names it."""
    cap = caps.max_tokens if not key_cap else min(caps.max_tokens, key_cap)
    if requested is None:
        return min(caps.default_max_tokens, cap)
    if requested <= cap:
        return requested
    if caps.over_cap == "reject":
        raise InvalidRequest(f"{name} {requested} is above this key's limit of {cap}", param=name)
    return cap


def apply_token_cap(
    body: RequestBody,
    key_cap: int | None,
    caps: CapSettings,
    fields: tuple[str, ...] = CHAT_CAP_FIELDS,
) -> bool:
    """Write the effective cap into ``body.data`` (``fields``: the route's, as
    :data:`CHAT_CAP_FIELDS`; an agent API's one output field: ``max_output_tokens`` on
    ``/v1/responses``, ``max_tokens`` on ``/v1/messages``); return whether the body changed."""
    limit = effective_max_tokens(body.max_tokens, key_cap, caps, fields[0])
    data = body.data
    changed = False
    for field in fields:
        if data.get(field) != limit and (field == fields[0] or field in data):
            data[field] = limit
            changed = True
    body.max_tokens = limit
    return changed


class FanOutLimits(Protocol):
    """A key's fan-out bounds (``gateway.keyfile.ApiKey``); ``None``: the gateway's."""

    @property
    def max_n(self) -> int | None: ...

    @property
    def max_best_of(self) -> int | None: ...

    @property
    def max_prompts(self) -> int | None: ...

    @property
    def max_completions(self) -> int | None: ...


def check_fan_out(body: RequestBody, key: FanOutLimits | None, caps: CapSettings) -> None:
    """Refuse (400, the field named) a body over a fan-out bound of ``key`` or ``caps``."""
    if body.choices == 1 and body.prompts == 1:
        return  # one completion: every bound is at least 1 (the settings and keys file say so)
    batch = "prompt" if "prompt" in body.data else "input"
    asked = (
        ("max_n", "n", _choices(body, "n"), "'n' is {}"),
        ("max_best_of", "best_of", _choices(body, "best_of"), "'best_of' is {}"),
        ("max_prompts", batch, body.prompts, f"'{batch}' holds {{}} prompts"),
        ("max_completions", "n", body.completions, _COMPLETIONS),
    )
    for limit, param, count, says in asked:
        gateway_bound: int = getattr(caps, limit)
        key_bound: int | None = getattr(key, limit) if key is not None else None
        bound = gateway_bound if key_bound is None else min(gateway_bound, key_bound)
        if count > bound:
            message = f"{says.format(count)}, above this key's limit of {bound}"
            raise InvalidRequest(message, param=param)


_COMPLETIONS = "the request asks for {} completions (prompts x max(n, best_of))"


def _choices(body: RequestBody, name: str) -> int:
    """``n`` or ``best_of`` as the parser read it (a positive integer, else absent)."""
    if body.choices == 1:  # neither above 1; embeddings read neither
        return 1
    value = body.data.get(name)
    return value if isinstance(value, int) else 1
