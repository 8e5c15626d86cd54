"""Usage metering of relayed answers: what the upstream reported it used.

:class:`StreamMeter` sits on an SSE stream: it passes complete events through as they
arrive and reads the usage vLLM puts on them. The gateway asks for
``stream_options: {"include_usage": true, "continuous_usage_stats": true}``, so every chunk
carries the usage of its choice so far (``prompt_tokens`` of its prompt, the choice's
cumulative ``completion_tokens``), and a final ``"choices": []`` chunk the totals. The meter
removes the per-chunk ``usage`` again and drops the final chunk, each unless the client
asked for it; so a stream cut by a disconnect or a timeout is billed what vLLM reported up
to its last chunk: the latest ``completion_tokens`` of every choice, summed, and the
``prompt_tokens`` of every prompt. An upstream that reports no usage at all leaves the
count of content events relayed (vLLM sends one or more tokens a chunk).

The per-chunk work stays on bytes: an event without ``"usage"`` is passed through
untouched; a chat chunk as vLLM writes it (compact JSON, its choice first, the flat ``usage``
member last) is read by one anchored pattern that gives the choice's index, both counts and
where the member starts; any other event with a single ``"usage":{...}`` member has that
member cut out by position and only its ~80 bytes decoded. Anything else (the member twice,
odd spacing before it) is parsed and re-encoded, one parse per event. The three paths give
the same bytes and counts wherever more than one of them applies.

:func:`usage_from_json` reads ``usage`` of a non-streaming answer: the top-level member,
never one nested in ``choices`` or ``prompt_logprobs``; chat's counts or the agent APIs'
(``input_tokens``, ``output_tokens``: :func:`agent_usage`). Their streams are metered by
:class:`gateway.event_meter.EventMeter`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]"
# [DONE] opening an event: in a content event's JSON string it follows a quote, never a blank
# line (a newline in a string is escaped), so a model that writes it is not taken for the end
_DONE_AFTER_EVENT = _EVENT_END + _DONE
_USAGE = b'"usage"'
_USAGE_MEMBER = b'"usage":{'
_NO_CHOICES = b'"choices":[]'
_CHOICE_INDEX = re.compile(rb'"index":\s*(\d+)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_SPACE = b" \t\r\n"
# A chat chunk as vLLM's OpenAI server writes it with continuous_usage_stats (pydantic's
# compact JSON): one choice with a text delta, no logprobs, the flat usage member last. Groups:
# the choice's index (1), the member ``,"usage":{...}`` that ends the event (2), its
# prompt_tokens (3) and completion_tokens (4). Its only free text is the id, the model, the
# delta's string and the finish reason: none holds an unescaped quote or a control character,
# so nothing in them reads as a member name (``"usage"``, ``"index"``, ``"choices"``) or as an
# event's end, and whatever the pattern matches is one whole event.
_STRING = rb'[^"\\\x00-\x1f]*(?:\\[^\x00-\x1f][^"\\\x00-\x1f]*)*'
_VLLM_CHUNK = re.compile(
    rb'data: \{"id":"[^"\\\x00-\x1f]*","object":"chat\.completion\.chunk","created":\d+,'
    rb'"model":"[^"\\\x00-\x1f]*","choices":\[\{"index":(0|[1-9]\d*),'
    rb'"delta":\{(?:"role":"assistant",)?"(?:content|reasoning)":"' + _STRING + rb'"\},'
    rb'"logprobs":null,"finish_reason":(?:null|"[a-z_]+","stop_reason":(?:null|\d+))'
    rb'(?:,"token_ids":(?:null|\[[\d,]*\]))?\}\]'
    rb'(,"usage":\{"prompt_tokens":(\d+),"total_tokens":\d+,"completion_tokens":(\d+)'
    rb'(?:,"completion_tokens_details":null)?\}\})'
)
_TAIL_TRIES = 4  # top-level candidates tried from the end before parsing the whole answer
_DECODER = json.JSONDecoder()


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_mapping(cls, usage: object) -> Usage | None:
        """Chat's ``prompt_tokens``/``completion_tokens``, else the agent APIs'
        ``input_tokens``/``output_tokens`` (:func:`agent_usage`)."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        if prompt is None and "input_tokens" in usage:
            return agent_usage(usage)
        completion = usage.get("completion_tokens", 0)
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(prompt, completion or 0)


# Anthropic's input_tokens leaves out the prompt tokens read from or written to its cache
# (vLLM's /v1/messages subtracts them from prompt_tokens when it reports them): billed too.
_ANTHROPIC_CACHE = ("cache_read_input_tokens", "cache_creation_input_tokens")


def agent_usage(usage: dict[str, object]) -> Usage | None:
    """The usage of ``/v1/responses`` (``input_tokens`` counts the cached ones, which its
    ``input_tokens_details`` only itemizes) or ``/v1/messages`` (plus its cache counts)."""
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int | None):
        return None
    for name in _ANTHROPIC_CACHE:
        cached = usage.get(name)
        prompt += cached if isinstance(cached, int) else 0
    return Usage(prompt, completion or 0)


class StreamMeter:
    """Feed it upstream bytes; it returns what to send on and remembers the usage.

    ``keep_usage``: the client asked for the final usage chunk; ``keep_chunk_usage``: for
    usage on every chunk too (or the gateway did not ask for it); ``choices_per_prompt``:
    the request's ``n``, so that choice ``i`` belongs to prompt ``i // n`` (vLLM numbers the
    choices of a batch prompt after prompt).
    """

    __slots__ = (
        "_choices_per_prompt",
        "_completion",
        "_keep_chunk_usage",
        "_keep_usage",
        "_pending",
        "_prompt",
        "content_events",
        "done",
        "usage",
    )

    def __init__(
        self, keep_usage: bool, keep_chunk_usage: bool = True, choices_per_prompt: int = 1
    ) -> None:
        self._keep_usage = keep_usage
        self._keep_chunk_usage = keep_chunk_usage
        self._choices_per_prompt = max(1, choices_per_prompt)
        self._pending = b""
        self._completion: dict[int, int] = {}  # choice index -> its completion tokens so far
        self._prompt: dict[int, int] = {}  # prompt index -> its prompt tokens
        self.content_events = 0
        self.done = False  # the upstream sent data: [DONE]
        self.usage: Usage | None = None  # the final usage chunk's

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        tried = data.endswith(_EVENT_END)
        if tried:  # one vLLM chunk, as vLLM sends them: matched at once
            one = _VLLM_CHUNK.fullmatch(data, 0, len(data) - len(_EVENT_END))
            if one is not None:
                self._pending = b""
                return self._vllm_chunk(data, one)
        end = data.rfind(_EVENT_END)
        if end < 0:
            self._pending = data
            return b""
        end += len(_EVENT_END)
        complete, self._pending = data[:end], data[end:]
        if _USAGE not in complete:  # no usage anywhere: count the events, pass them on
            events = complete.count(_EVENT_END)
            if _DONE in complete and (complete.startswith(_DONE) or _DONE_AFTER_EVENT in complete):
                events -= 1
                self.done = True
            self.content_events += events
            return complete
        if complete.find(_EVENT_END) == len(complete) - len(_EVENT_END):  # one event: most
            # (when ``data`` ended with it, it is ``data``, which the pattern did not match)
            kept = self._event(complete[: -len(_EVENT_END)], vllm_tried=tried)
            return b"" if kept is None else kept + _EVENT_END
        sent = (self._event(event) for event in complete.split(_EVENT_END)[:-1])
        return b"".join(event + _EVENT_END for event in sent if event is not None)

    def flush(self) -> bytes:
        """Whatever incomplete event is left when the upstream ends the stream."""
        rest, self._pending = self._pending, b""
        return rest

    @property
    def reported(self) -> bool:
        """Whether the upstream reported any usage, per chunk or final."""
        return self.usage is not None or bool(self._completion)

    @property
    def prompt_tokens(self) -> int | None:
        if self.usage is not None:
            return self.usage.prompt_tokens
        return sum(self._prompt.values()) if self._prompt else None

    @property
    def completion_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.completion_tokens
        if self._completion:
            return sum(self._completion.values())
        return self.content_events

    def _event(self, event: bytes, vllm_tried: bool = False) -> bytes | None:
        """One complete event (without its blank line): what to send on, or ``None``.
        ``vllm_tried``: :data:`_VLLM_CHUNK` is known not to match it."""
        chunk = None if vllm_tried else _VLLM_CHUNK.fullmatch(event)
        if chunk is not None:
            return self._vllm_chunk(event, chunk)
        if _USAGE not in event:
            if event.lstrip().startswith(_DONE):
                self.done = True
            else:
                self.content_events += 1
            return event
        start = event.find(_USAGE_MEMBER)
        if start < 0 or event.find(_USAGE, start + len(_USAGE)) >= 0:
            return self._parsed_event(event)
        value_start = start + len(_USAGE_MEMBER) - 1
        value_end = _object_end(event, value_start)
        usage = _compact_usage(event, value_start, value_end) if value_end > 0 else None
        if usage is None:
            return self._parsed_event(event)
        if _NO_CHOICES in event:
            self.usage = usage
            return event if self._keep_usage else None
        index = 0
        if self._choices_per_prompt > 1 or b'"index":0' not in event:
            found = _CHOICE_INDEX.search(event)
            index = int(found.group(1)) if found else 0
        self._count_chunk(index, usage)
        if self._keep_chunk_usage:
            return event
        cut = _without_member(event, start, value_end)
        return cut if cut is not None else self._parsed_event(event, strip=True)

    def _vllm_chunk(self, data: bytes, chunk: re.Match[bytes]) -> bytes:
        """The event :data:`_VLLM_CHUNK` matched in ``data`` (and its blank line, if ``data``
        has it): counted and its usage member cut as the byte path of :meth:`_event` would
        (its one ``"index":`` is the choice's; its first ``"usage":{`` is that member)."""
        self._count(int(chunk[1]), int(chunk[3]), int(chunk[4]))
        if self._keep_chunk_usage:
            return data
        return data[: chunk.start(2)] + data[chunk.end(2) - 1 :]

    def _count_chunk(self, index: int, usage: Usage) -> None:
        self._count(index, usage.prompt_tokens, usage.completion_tokens)

    def _count(self, index: int, prompt: int, completion: int) -> None:
        self.content_events += 1
        self._completion[index] = max(self._completion.get(index, 0), completion)
        self._prompt[index // self._choices_per_prompt] = prompt

    def _parsed_event(self, event: bytes, strip: bool = False) -> bytes | None:
        """The slow path: parse the event's JSON, read and maybe remove its usage."""
        payload = event.strip()
        parsed = None
        if payload.startswith(b"data:"):
            try:
                parsed = json.loads(payload[5:])
            except (ValueError, RecursionError):
                parsed = None
        if not isinstance(parsed, dict):
            self.content_events += 1
            return event
        usage = Usage.from_mapping(parsed.get("usage"))
        choices = parsed.get("choices")
        if usage is None:
            self.content_events += 1
            return event
        if not choices:
            self.usage = usage
            return event if self._keep_usage else None
        first = choices[0] if isinstance(choices, list) else None
        index = first.get("index") if isinstance(first, dict) else 0
        self._count_chunk(index if isinstance(index, int) else 0, usage)
        if self._keep_chunk_usage and not strip:
            return event
        del parsed["usage"]
        return b"data: " + json.dumps(parsed, separators=(",", ":")).encode()


def _compact_usage(event: bytes, start: int, end: int) -> Usage | None:
    """The usage object at ``event[start:end]``, read without a JSON parse: its members are
    fixed names with integer (or null, or object) values, so the two counts are found by
    name. ``None`` if they are not plain integers there (the parsed path decides then)."""
    prompt = _PROMPT_TOKENS.search(event, start, end)
    if prompt is None:
        return None
    completion = _COMPLETION_TOKENS.search(event, start, end)
    if completion is None:
        if b'"completion_tokens"' in event[start:end]:
            return None
        return Usage(int(prompt.group(1)), 0)
    return Usage(int(prompt.group(1)), int(completion.group(1)))


def _object_end(data: bytes, start: int) -> int:
    """The end (exclusive) of the JSON object at ``data[start]`` ("{"), or -1.

    For usage objects only: their values are numbers, null and such objects, never strings,
    so braces are all structural."""
    end = data.find(b"}", start)
    while end >= 0:
        if data.count(b"{", start, end + 1) == data.count(b"}", start, end + 1):
            return end + 1
        end = data.find(b"}", end + 1)
    return -1


def _without_member(event: bytes, start: int, end: int) -> bytes | None:
    """``event`` without the member ``"usage":{...}`` at ``start:end`` and its comma."""
    before = event[:start].rstrip(_SPACE)
    if before.endswith(b","):
        return before[:-1] + event[end:]
    after = event[end:].lstrip(_SPACE)
    if before.endswith(b"{") and after[:1] in (b",", b"}"):
        return event[:start] + (after[1:] if after[:1] == b"," else after)
    return None


def usage_from_json(body: bytes) -> Usage | None:
    """The top-level ``usage`` of a JSON answer, or ``None`` when it has none.

    vLLM writes ``usage`` after ``choices``, followed by a few short members
    (``prompt_logprobs``, ``kv_transfer_params``, ...), so the candidates are tried from the
    end: a ``"usage"`` key whose value decodes and after which the rest of the body parses as
    the remaining members of one object that closes the body is a member of the top-level
    object. Anything nested fails that test. Beyond a few candidates, the whole body is
    parsed instead: the same answer, with no shortcut."""
    at = len(body)
    for _ in range(_TAIL_TRIES):
        at = body.rfind(_USAGE, 0, at)
        if at < 0:
            break
        found, usage = _top_level_usage_at(body, at)
        if found:
            return usage
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return Usage.from_mapping(data.get("usage")) if isinstance(data, dict) else None


def _top_level_usage_at(body: bytes, at: int) -> tuple[bool, Usage | None]:
    """(whether ``body[at:]`` is the top-level ``"usage"`` member, its usage)."""
    before = at - 1
    while before >= 0 and body[before] in _SPACE:
        before -= 1
    if before < 0 or body[before] not in b",{":
        return False, None  # inside a string or a value, not a key
    try:
        tail = body[at + len(_USAGE) :].decode()
    except UnicodeDecodeError:
        return False, None
    colon = len(tail) - len(tail.lstrip())
    if tail[colon : colon + 1] != ":":
        return False, None
    start = colon + 1
    start += len(tail) - start - len(tail[start:].lstrip())
    try:
        value, end = _DECODER.raw_decode(tail, start)
    except (ValueError, RecursionError):
        return False, None
    rest = tail[end:].strip()
    if rest != "}":
        if not rest.startswith(","):
            return False, None
        try:
            json.loads("{" + rest[1:])  # the other members, then the top-level object's end
        except (ValueError, RecursionError):
            return False, None
    return True, Usage.from_mapping(value)
