"""Parse a client's JSON body once and keep only the fields the gateway acts on.

:func:`parse_body` validates ``model``, ``stream``, ``max_tokens`` /
``max_completion_tokens``, ``n`` / ``best_of`` and ``stream_options`` (a clear
:class:`InvalidRequest` for each bad one: the fields of :mod:`gateway.body_fields`, which
also write the OpenAPI document's request bodies) and counts the prompt's tokens with the given
:class:`PromptCounter` (the model's tokenizer, :mod:`gateway.prompt_tokens`), else with
:func:`estimate_prompt_tokens`, an upper bound; the limiter reserves that count and settles
with the real usage afterwards. Every other field passes through untouched.

The reservation is :attr:`RequestBody.reservation`, the one place the counts are
multiplied: the prompt count (batch prompts summed, as vLLM's ``usage.prompt_tokens``), plus
:data:`MEDIA_TOKENS` per image, audio or video part, plus ``max_tokens`` for every
completion the body asks for: ``max(n, best_of)`` choices (beam search's width is ``n``, or
``best_of`` where older vLLM reads it) for each prompt of a ``/v1/completions`` batch (a list
of strings or of token-id lists).

Hostile bodies are a 400, never a 500: more JSON values than ``max_values`` or arrays and
objects than ``max_containers`` (counted on the bytes before the parse,
:mod:`gateway.body_values`), bytes that are not UTF-8, JSON nested over :data:`MAX_DEPTH`
levels (no OpenAI request needs a tenth of it; Python's parser would raise
``RecursionError`` near 1000), and lone UTF-16 surrogates (``"\\ud800"``, which no
UTF-8 encoder can write back out). A body naming one of the fields the gateway reads twice
(``{"max_tokens": 1, "max_tokens": 9999}``: Python keeps the last, another parser may keep
the first) is marked :attr:`RequestBody.ambiguous`, and the gateway forwards it re-encoded,
so the upstream reads the values the gateway acted on.
"""

from __future__ import annotations

import gc
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.body_fields import (
    BEST_OF,
    CHAT_BODY,
    COMPLETIONS_BODY,
    EMBEDDINGS_BODY,
    MAX_COMPLETION_TOKENS,
    MAX_TOKENS,
    MEDIA_PARTS,
    MESSAGES_BODY,
    MODEL,
    NO_STREAM,
    RESPONSES_BODY,
    STREAM,
    STREAM_OPTIONS,
    N,
    Shaped,
)
from gateway.body_values import check_values
from gateway.errors import InvalidRequest
from gateway.prompt_tokens import ByteBound, PromptCounter

if TYPE_CHECKING:
    from gateway.agent_apis import AgentApi

_FALLBACK = ByteBound()

MAX_DEPTH = 128  # nesting levels of arrays and objects
# What one media part stands for in the prompt: what its URL or base64 says of it is no
# measure. Typical of the models vLLM serves: an image is 576 (LLaVA-1.5) to ~1,600
# (Llama 3.2 Vision, Qwen2-VL at 1 MP) tokens, 30 s of audio ~750 (Whisper-style encoders).
MEDIA_TOKENS = {"image": 1024, "audio": 750, "video": 4096}
_MEDIA_KINDS = {part: media for part, (media, _) in MEDIA_PARTS.items()}
# The fields the gateway acts on, as keys: two of one -> forward re-encoded. Beside the
# documented ones, the flags inside stream_options, vLLM's use_beam_search (beam width) and
# priority (a key's class: gateway.priority_class).
# The agent bodies add their output and refused fields, not their prompt fields: "system",
# "instructions" are common names inside tool schemas, and naming them here would re-encode
# every chat body holding such a schema (the prompt bound only reserves; the settle bills).
_READ_NAMES = sorted(
    {f.name for body in (CHAT_BODY, COMPLETIONS_BODY, EMBEDDINGS_BODY) for f in body}
    | {
        f.name
        for body in (RESPONSES_BODY, MESSAGES_BODY)
        for f in body
        if not isinstance(f, Shaped)
    }
    | set(STREAM_OPTIONS.flags)
    | {"use_beam_search", "priority"}
)
_READ_KEYS = re.compile(r'"(?:' + "|".join(_READ_NAMES) + r')"\s*:')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_CONTAINERS = (dict, list)  # what json.loads makes of arrays and objects, exactly


@dataclass(slots=True)
class RequestBody:
    """The parsed body and the facts taken from it."""

    data: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    prompt_tokens_estimate: int  # the prompt count plus MEDIA_TOKENS per media part
    include_chunk_usage: bool = False  # usage on every chunk: continuous_usage_stats too
    choices: int = 1  # completions per prompt: max(n, best_of)
    prompts: int = 1  # prompts in a batch: /v1/completions' prompt, /v1/embeddings' input
    ambiguous: bool = False  # a field the gateway reads is named twice: re-encode it

    def count_prompt(self, prompt_tokens: int) -> None:
        """Set the estimate: the counter's ``prompt_tokens`` plus the media parts'."""
        self.prompt_tokens_estimate = prompt_tokens + media_tokens(self.data)

    @property
    def completions(self) -> int:
        """Completions the body asks for: each of its prompts, ``choices`` times."""
        return self.choices * self.prompts

    @property
    def reservation(self) -> int:
        """What the limiter reserves: the prompt estimate, plus ``max_tokens`` for every
        completion (the effective cap, once :func:`gateway.caps.apply_token_cap` ran)."""
        return self.prompt_tokens_estimate + (self.max_tokens or 0) * self.completions


def parse_body(
    raw: bytes,
    counter: PromptCounter | None = None,
    *,
    generates: bool = True,
    max_values: int | None = None,
    max_containers: int | None = None,
    api: AgentApi | None = None,
) -> RequestBody:
    """``generates``: the route generates tokens (chat, completions); embeddings do not,
    and there ``stream: true`` is refused and the output fields are not read. ``api``: an
    agent API's body, counted by its prompt bound."""
    body = parse_fields(
        raw, generates=generates, max_values=max_values, max_containers=max_containers, api=api
    )
    if api is not None:
        body.prompt_tokens_estimate = api.prompt_bound(_FALLBACK).count(body.data)
    else:
        body.count_prompt((counter or _FALLBACK).count(body.data))
    return body


def parse_fields(
    raw: bytes,
    *,
    generates: bool = True,
    max_values: int | None = None,
    max_containers: int | None = None,
    api: AgentApi | None = None,
) -> RequestBody:
    """:func:`parse_body` without the count: the gateway counts with a time budget,
    large bodies off the event loop (:mod:`gateway.prompt_budget`), then calls
    :meth:`RequestBody.count_prompt`. ``max_values``, ``max_containers``: a body holding
    more JSON values, or more arrays and objects, is refused before it is parsed
    (:mod:`gateway.body_values`). ``api``: an agent API's body (:mod:`gateway.agent_apis`),
    its own fields read instead of chat's."""
    if max_values is not None or max_containers is not None:
        check_values(raw, max_values or len(raw), max_containers or len(raw))
    data, ambiguous = _load(raw)
    model = MODEL.read(data)
    if api is not None:
        stream = STREAM.read(data)
        return RequestBody(
            data=data,
            model=model,
            stream=stream,
            max_tokens=api.read(data),
            include_usage=False,
            prompt_tokens_estimate=0,
            ambiguous=ambiguous,
        )
    if not generates:
        return RequestBody(
            data=data,
            model=model,
            stream=NO_STREAM.read(data),
            max_tokens=None,
            include_usage=False,
            prompt_tokens_estimate=0,
            prompts=_batch_prompts(data.get("input")),
            ambiguous=ambiguous,
        )
    stream = STREAM.read(data)
    options = STREAM_OPTIONS.read(data)
    include_usage = options["include_usage"]
    return RequestBody(
        data=data,
        model=model,
        stream=stream,
        max_tokens=_requested_max_tokens(data),
        include_usage=include_usage,
        prompt_tokens_estimate=0,
        include_chunk_usage=include_usage and options["continuous_usage_stats"],
        choices=_choices(data),
        prompts=_batch_prompts(data.get("prompt")),
        ambiguous=ambiguous,
    )


def _load(raw: bytes) -> tuple[dict[str, Any], bool]:
    """The body as a dict, and whether a key the gateway reads appears twice in it."""
    try:
        text = raw.decode().removeprefix("\ufeff")  # strict: no surrogates as UTF-8 bytes
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not valid UTF-8: {exc}") from None
    try:
        data = _parse(text)
    except RecursionError:
        raise InvalidRequest(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise InvalidRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise InvalidRequest("the body has a lone UTF-16 surrogate (such as \\ud800)")
    keys = _READ_KEYS.findall(text)
    return data, len(keys) != len(set(keys))


def _parse(text: str) -> Any:
    """``json.loads`` with the cyclic garbage collector paused: a parse creating many lists
    and objects otherwise runs it again and again over them (1.2 us per empty list instead
    of 0.17, measured here). Nothing else runs meanwhile: the parser holds the GIL."""
    if not gc.isenabled():
        return json.loads(text)
    gc.disable()
    try:
        return json.loads(text)
    finally:
        gc.enable()


def _deeper_than(data: dict[str, Any], limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (``data`` is level 1);
    level by level, one comprehension a level (a walk by stack took 0.9 us a container)."""
    level: list[Any] = [data]
    for _ in range(limit):
        level = [
            child
            for value in level
            for child in (value.values() if type(value) is dict else value)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return True


def _has_lone_surrogate(data: object) -> bool:
    """Whether any key or string holds half a surrogate pair (a decoded pair is one code
    point, so only a lone half fails to encode)."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _choices(data: dict[str, Any]) -> int:
    """``max(n, best_of)``: vLLM generates ``best_of`` sequences and returns ``n`` of them;
    beam search's width is ``n`` (``best_of`` in older vLLM)."""
    return max(N.read(data) or 1, BEST_OF.read(data) or 1)


def _batch_prompts(prompt: object) -> int:
    """Prompts in ``/v1/completions``' ``prompt`` (``/v1/embeddings``' ``input``): a list of
    strings or of token-id lists is a batch, one completion (embedding) each; a string or one
    list of token ids is one prompt. Counted on every route: a chat body naming a batch is
    over-reserved, never under."""
    if not isinstance(prompt, list) or not prompt:
        return 1
    if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
        return 1
    return len(prompt)


def media_tokens(data: dict[str, Any]) -> int:
    """:data:`MEDIA_TOKENS` for each image, audio or video part of the chat messages."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            total += sum(_media_part_tokens(part) for part in content if isinstance(part, dict))
    return total


def _media_part_tokens(part: dict[str, Any]) -> int:
    kind = part.get("type")
    if not isinstance(kind, str):  # vLLM also infers the type from the part's one key
        kind = next((key for key in part if key in _MEDIA_KINDS), "")
    media = _MEDIA_KINDS.get(kind)
    return MEDIA_TOKENS[media] if media else 0


def _requested_max_tokens(data: dict[str, Any]) -> int | None:
    """The smaller of ``max_completion_tokens`` and ``max_tokens``, ``None`` for neither."""
    completion, tokens = MAX_COMPLETION_TOKENS.read(data), MAX_TOKENS.read(data)
    if completion is None or tokens is None:  # each is None or at least 1
        return tokens if completion is None else completion
    return completion if completion <= tokens else tokens


def estimate_prompt_tokens(data: dict[str, Any]) -> int:
    """The fallback count: an upper bound on the prompt tokens of any tokenizer vLLM serves
    (:class:`gateway.prompt_tokens.ByteBound`, whose docstring has the proof); never below 1."""
    return _FALLBACK.count(data)


# json.dumps builds an encoder per call unless every option is its default: one kept here
# writes the same bytes (5.1 -> 3.9 us for a stream's chat body, timeit here, 2026-12-06).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encode_body(data: dict[str, Any]) -> bytes:
    """Compact JSON, ASCII only: every string escaped as the parser read it."""
    return _COMPACT.encode(data).encode()
