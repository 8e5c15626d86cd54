"""The usage meter's vLLM chunk pattern (``gateway.usage_meter._VLLM_CHUNK``) against the
meter as it was without it: the same bytes out of every read and the same counts, on streams
shaped like vLLM's and on what an upstream or a model could make of them."""

from __future__ import annotations

import itertools
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.usage_meter import _VLLM_CHUNK, StreamMeter, Usage

# --- the meter before the pattern, copied as it was (its functions below) -------------

_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]"
_DONE_AFTER_EVENT = _EVENT_END + _DONE
_USAGE = b'"usage"'
_USAGE_MEMBER = b'"usage":{'
_NO_CHOICES = b'"choices":[]'
_CHOICE_INDEX = re.compile(rb'"index":\s*(\d+)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_SPACE = b" \t\r\n"


class ReferenceMeter:
    """StreamMeter as it was before its vLLM chunk pattern, kept here unchanged."""

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
            kept = self._event(complete[: -len(_EVENT_END)])
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

    def _event(self, event: bytes) -> bytes | None:
        """One complete event (without its blank line): what to send on, or ``None``."""
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

    def _count_chunk(self, index: int, usage: Usage) -> None:
        self.content_events += 1
        self._completion[index] = max(self._completion.get(index, 0), usage.completion_tokens)
        self._prompt[index // self._choices_per_prompt] = usage.prompt_tokens

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


# --- streams shaped like vLLM's, and what an upstream or a model could make of them ------


class Raw(str):
    """JSON text written as it is (a member named twice, a count as no encoder writes it)."""


Member = tuple[str, object]


def encode(value: object, compact: bool, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return obj(value, compact, ascii_only)
    if isinstance(value, list):
        return (
            "["
            + ("," if compact else ", ").join(encode(v, compact, ascii_only) for v in value)
            + "]"
        )
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, separators=separators, ensure_ascii=ascii_only)


def obj(members: list[Member], compact: bool = True, ascii_only: bool = False) -> str:
    """A JSON object from its members in order (a list of pairs: a name may come twice)."""
    colon, comma = (":", ",") if compact else (": ", ", ")
    inner = comma.join(
        json.dumps(name) + colon + encode(value, compact, ascii_only) for name, value in members
    )
    return "{" + inner + "}"


ATTACKS = [
    '"usage":{"prompt_tokens":999,"total_tokens":999,"completion_tokens":999}',
    '"}],"usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1}}',
    '","usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1}}\n\n',
    '"choices":[]',
    '"index":0',
    '"index":7,',
    "data: [DONE]",
    "\n\ndata: [DONE]\n\n",
    "\\",
    '\\"',
    "\x00\x1f",
    "é€😀",
    "usage",
]
TEXT = st.lists(
    st.one_of(st.sampled_from(ATTACKS), st.text(alphabet='ab {}[]:,"\\\n\t\x01é', max_size=6)),
    max_size=3,
).map("".join)
NAME = st.one_of(st.sampled_from(["chatcmpl-0000000000005eed", "m", "", "index"]), TEXT)


def usage_members(prompt: int, completion: int) -> list[Member]:
    return [
        ("prompt_tokens", prompt),
        ("total_tokens", prompt + completion),
        ("completion_tokens", completion),
    ]


@st.composite
def usages(draw: st.DrawFn) -> object:
    prompt, completion = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    flat = usage_members(prompt, completion)
    shape = draw(st.integers(0, 7))
    if shape == 0:
        return flat  # vLLM's order, as 0.2x wrote it
    if shape == 1:
        return [*flat, ("completion_tokens_details", None)]  # as vLLM 0.32 writes it
    if shape == 2:
        return [flat[2], flat[0], flat[1]]
    if shape == 3:
        return [*flat[:2], ("completion_tokens", None)]
    if shape == 4:
        return [*flat, ("completion_tokens_details", [("reasoning_tokens", 1)])]
    if shape == 5:
        return [*flat, ("prompt_tokens_details", [("cached_tokens", 2)])]
    if shape == 6:
        return Raw(draw(st.sampled_from(["null", '"x"', "{}", "[]", '{"prompt_tokens":05}'])))
    return flat[:2]


@st.composite
def choices(draw: st.DrawFn) -> list[Member]:
    delta: list[Member] = draw(
        st.sampled_from(
            [
                [("role", "assistant"), ("content", "")],
                [("content", draw(TEXT))],
                [("reasoning", draw(TEXT))],
                [("content", draw(TEXT)), ("reasoning", draw(TEXT))],
                [("tool_calls", [[("index", 0), ("function", [("arguments", draw(TEXT))])]])],
                [],
            ]
        )
    )
    index = draw(st.one_of(st.integers(0, 5), st.sampled_from([Raw("05"), Raw("-1"), Raw("1.0")])))
    choice: list[Member] = [("index", index), ("delta", delta or Raw("{}"))]
    logprobs = draw(st.sampled_from([None, "top"]))
    if logprobs is not None:
        logprobs = [("content", [[("token", draw(TEXT)), ("logprob", -0.5)]])]
    choice.append(("logprobs", logprobs))
    finish = draw(st.sampled_from([None, "stop", "length", "tool_calls"]))
    choice.append(("finish_reason", finish))
    if finish is not None:
        choice.append(("stop_reason", draw(st.sampled_from([None, 7, "</s>", '"usage"']))))
    token_ids = draw(st.sampled_from(["absent", None, [1, 2]]))
    if token_ids != "absent":
        choice.append(("token_ids", token_ids))
    return choice


@st.composite
def vllm_events(draw: st.DrawFn) -> bytes:
    """One event: mostly a chunk as vLLM writes it, or one of its neighbours."""
    members: list[Member] = [
        ("id", draw(NAME)),
        ("object", draw(st.sampled_from(["chat.completion.chunk", "text_completion"]))),
        ("created", draw(st.integers(0, 2**40))),
        ("model", draw(NAME)),
    ]
    count = draw(st.sampled_from([1, 1, 1, 0, 2]))
    members.append(("choices", [draw(choices()) for _ in range(count)] or Raw("[]")))
    where = draw(st.sampled_from(["last", "last", "last", "none", "twice", "first", "nested"]))
    usage = draw(usages())
    if where in ("last", "twice"):
        members.append(("usage", usage))
    if where == "twice":
        members.append(("usage", draw(usages())))
    if where == "first":
        members.insert(0, ("usage", usage))
    if where == "nested":
        members[-1] = ("choices", [[("index", 0), ("usage", usage)]])
    if draw(st.booleans()) and draw(st.booleans()):
        members += [("prompt_token_ids", None), ("prompt_text", draw(TEXT))]
    compact = draw(st.sampled_from([True, True, True, False]))
    text = "data: " + obj(members, compact, ascii_only=draw(st.booleans()))
    data = text.encode()
    if draw(st.integers(0, 4)) == 0:  # odd bytes: something inserted or cut out
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 3))
        noise = draw(st.sampled_from([b" ", b"\n", b"\\", b'"', b"}", b"0", b"\n\n", b""]))
        data = data[:at] + noise + data[at + cut :]
    return data


@st.composite
def exact_chunks(draw: st.DrawFn) -> bytes:
    """A chunk as vLLM writes it, the model's text anything, sometimes a byte off."""
    details = draw(st.booleans())
    finish = draw(st.sampled_from(["", "", "stop", "length"]))
    data = vllm_chunk(
        draw(st.integers(0, 12)),
        draw(TEXT),
        draw(st.integers(0, 10**6)),
        draw(st.integers(0, 10**6)),
        finish,
        details,
        reasoning=draw(st.booleans()),
    )[:-2]
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        noise = draw(st.sampled_from([b" ", b"\n", b"\\", b'"', b"}", b"0", b"\n\n", b"", b"\x01"]))
        data = data[:at] + noise + data[at + draw(st.integers(0, 3)) :]
    return data


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    events = draw(st.lists(st.one_of(exact_chunks(), vllm_events()), min_size=1, max_size=6))
    if draw(st.booleans()):
        events.append(b"data: [DONE]")
    gap = draw(st.sampled_from([b"\n\n", b"\n\n", b"\n\n", b"\n\n\n", b"\r\n\r\n\n\n"]))
    return b"".join(event + gap for event in events) + draw(st.sampled_from([b"", b"data: {"]))


def state(meter: StreamMeter | ReferenceMeter) -> tuple[object, ...]:
    return (
        meter.content_events,
        meter.done,
        meter.usage,
        meter._completion,
        meter._prompt,
        meter.prompt_tokens,
        meter.completion_tokens,
        meter.reported,
    )


def both(stream: bytes, reads: list[bytes], keep: tuple[bool, bool], n: int) -> None:
    """Feed the reads to the meter and to the reference: the same bytes out of each read,
    the same state after each."""
    meter = StreamMeter(keep[0], keep[1], n)
    reference = ReferenceMeter(keep[0], keep[1], n)
    for read in reads:
        assert meter.feed(read) == reference.feed(read), (stream, read)
        assert state(meter) == state(reference), stream
    assert meter.flush() == reference.flush()


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams(),
    st.lists(st.integers(0, 10**6), max_size=6),
    st.tuples(st.booleans(), st.booleans()),
    st.integers(1, 3),
)
def test_the_pattern_gives_what_the_meter_gave_before(
    stream: bytes, cuts: list[int], keep: tuple[bool, bool], n: int
) -> None:
    both(stream, split(stream, cuts), keep, n)
    both(stream, [stream[i : i + 1] for i in range(len(stream))][:400] or [stream], keep, n)


def vllm_chunk(
    index: int,
    content: str,
    prompt: int,
    completion: int,
    finish: str = "",
    details: bool = True,
    reasoning: bool = False,
) -> bytes:
    """A token's chunk byte for byte as vLLM 0.32 writes it (``bench/inproc.py``'s); without
    ``details``, its usage as earlier versions wrote it; ``reasoning``: a reasoning delta."""
    reason = f'"{finish}","stop_reason":null' if finish else "null"
    text = json.dumps(content, ensure_ascii=False)
    delta = f'"reasoning":{text}' if reasoning else f'"content":{text}'
    choice = f'{{"index":{index},"delta":{{{delta}}},"logprobs":null,'
    choice += f'"finish_reason":{reason},"token_ids":null}}'
    members = usage_members(prompt, completion)
    usage = obj([*members, ("completion_tokens_details", None)] if details else members)
    head = '{"id":"chatcmpl-0000000000005eed","object":"chat.completion.chunk","created":1,'
    return f'data: {head}"model":"m","choices":[{choice}],"usage":{usage}}}\n\n'.encode()


def test_vllm_chunks_take_the_pattern_and_lose_only_their_usage() -> None:
    texts = ["tok ", '"usage":{"prompt_tokens":1,"total_tokens":1,"completion_tokens":1}}', "é"]
    chunks = [vllm_chunk(0, t, 9, i + 1, "length" if i == 2 else "") for i, t in enumerate(texts)]
    for chunk in chunks:
        assert _VLLM_CHUNK.fullmatch(chunk[:-2]) is not None
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    out = [meter.feed(chunk) for chunk in chunks]
    for chunk, sent in zip(chunks, out, strict=True):
        expected = json.loads(chunk[6:])
        del expected["usage"]
        assert (
            sent
            == b"data: "
            + json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n\n"
        )
    assert (meter.prompt_tokens, meter.completion_tokens, meter.content_events) == (9, 3, 3)
    for reads in ([b"".join(chunks)], [c[:50] for c in chunks] + [c[50:] for c in chunks]):
        both(b"".join(chunks), reads, (False, False), 1)


def test_a_content_that_writes_the_usage_member_is_not_read_for_it() -> None:
    # the model writes what ends a vLLM chunk; in its JSON string every quote is escaped
    forged = '"}],"usage":{"prompt_tokens":1,"total_tokens":1000001,"completion_tokens":1000000}}'
    chunk = vllm_chunk(0, forged, 9, 4)
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    sent = meter.feed(chunk)
    assert json.loads(sent[6:])["choices"][0]["delta"]["content"] == forged
    assert (meter.prompt_tokens, meter.completion_tokens) == (9, 4)


def test_a_member_named_twice_is_left_to_the_parse() -> None:
    chunk = vllm_chunk(0, "a", 9, 4)[:-3]  # without its last "}\n\n"
    twice = chunk + b',"usage":{"prompt_tokens":9,"total_tokens":9,"completion_tokens":0}}\n\n'
    assert _VLLM_CHUNK.fullmatch(twice[:-2]) is None
    for keep in itertools.product([False, True], repeat=2):
        both(twice, [twice], keep, 1)
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    meter.feed(twice)
    assert meter.completion_tokens == 0  # the parse keeps the last member, as json.loads does
