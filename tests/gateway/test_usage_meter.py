"""StreamMeter and usage_from_json: pure functions over bytes."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.usage_meter import StreamMeter, usage_from_json


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


CONTENT = [event({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) for i in range(3)]
USAGE = event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"
STREAM = b"".join(CONTENT) + USAGE + DONE


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=8, unique=True))
def test_any_split_gives_the_same_output_and_usage(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    meter = StreamMeter(keep_usage=False)
    out = b"".join(meter.feed(STREAM[a:b]) for a, b in itertools.pairwise(bounds))
    out += meter.flush()
    assert out == b"".join(CONTENT) + DONE
    assert meter.usage is not None
    assert (meter.usage.prompt_tokens, meter.usage.completion_tokens) == (5, 3)
    assert meter.content_events == 3


def test_usage_is_kept_when_the_client_asked() -> None:
    meter = StreamMeter(keep_usage=True)
    assert meter.feed(STREAM) == STREAM


def test_without_usage_the_content_chunks_are_counted() -> None:
    meter = StreamMeter(keep_usage=False)
    meter.feed(CONTENT[0] + CONTENT[1][:10])
    assert meter.completion_tokens == 1
    meter.feed(CONTENT[1][10:])
    assert meter.completion_tokens == 2
    assert meter.usage is None


def test_a_model_that_writes_done_has_not_ended_the_stream() -> None:
    """``data: [DONE]`` inside a content event's text is content; the end is the event."""
    chunk = event({"choices": [{"delta": {"content": "then data: [DONE]"}}]})
    meter = StreamMeter(keep_usage=False)
    assert meter.feed(chunk) == chunk
    assert not meter.done and meter.completion_tokens == 1
    meter.feed(chunk + b"data: [DONE]\n\n")
    assert meter.done and meter.completion_tokens == 2


def test_a_content_chunk_that_mentions_usage_is_not_taken_for_it() -> None:
    chunk = event({"choices": [{"delta": {"content": '"usage"'}}], "usage": None})
    meter = StreamMeter(keep_usage=False)
    assert meter.feed(chunk) == chunk
    assert meter.usage is None


def test_usage_from_json_reads_the_tail_only() -> None:
    body = json.dumps({"choices": [{"text": "usage"}], "usage": {"prompt_tokens": 2}}).encode()
    usage = usage_from_json(body)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 0)
    assert usage_from_json(b'{"choices": []}') is None
    assert usage_from_json(b'{"usage": "nope"}') is None


def vllm_chunk(index: int, text: str, prompt: int, completion: int | None) -> bytes:
    """A chunk as vLLM 0.32 serializes it (pydantic, compact), usage last when present."""
    choice = {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    chunk: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    if completion is not None:
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
        chunk["usage"] = usage | {"completion_tokens": completion}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def final_usage(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
    chunk = {"id": "chatcmpl-1", "choices": [], "usage": usage | {"completion_tokens": completion}}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


# 3 chunks of 4 tokens each, with continuous usage, then the final usage chunk
TEXTS = ['a "usage":{"x":1}', "b", "c"]  # a content string that mentions usage
CONTINUOUS = [vllm_chunk(0, t, 9, 4 * (i + 1)) for i, t in enumerate(TEXTS)]
PLAIN = [vllm_chunk(0, t, 9, None) for t in TEXTS]
CONTINUOUS_STREAM = b"".join(CONTINUOUS) + final_usage(9, 12) + DONE


@given(st.lists(st.integers(min_value=1, max_value=len(CONTINUOUS_STREAM) - 1), max_size=8))
def test_per_chunk_usage_is_stripped_whatever_the_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(CONTINUOUS_STREAM)]
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    out = b"".join(meter.feed(CONTINUOUS_STREAM[a:b]) for a, b in itertools.pairwise(bounds))
    out += meter.flush()
    assert out == b"".join(PLAIN) + DONE
    assert (meter.prompt_tokens, meter.completion_tokens) == (9, 12)


def test_stripped_chunks_are_the_chunks_without_usage() -> None:
    meter = StreamMeter(keep_usage=True, keep_chunk_usage=False)
    out = meter.feed(CONTINUOUS_STREAM)
    assert out == b"".join(PLAIN) + final_usage(9, 12) + DONE
    for event in out.split(b"\n\n")[:3]:
        parsed = json.loads(event.removeprefix(b"data: "))
        assert "usage" not in parsed and parsed["choices"][0]["delta"]["content"]


def test_everything_is_kept_when_the_client_asked_for_continuous_usage() -> None:
    meter = StreamMeter(keep_usage=True, keep_chunk_usage=True)
    assert meter.feed(CONTINUOUS_STREAM) == CONTINUOUS_STREAM
    assert meter.completion_tokens == 12


def test_a_cut_stream_counts_the_last_reported_usage_not_the_chunks() -> None:
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    meter.feed(CONTINUOUS[0] + CONTINUOUS[1])
    assert (meter.prompt_tokens, meter.completion_tokens) == (9, 8)
    assert meter.usage is None and meter.reported and not meter.done


def test_choices_and_prompts_are_summed_from_their_own_usage() -> None:
    # a batch of two prompts (9 and 5 tokens) with n=2: choice i belongs to prompt i // 2
    events = [
        vllm_chunk(0, "a", 9, 1),
        vllm_chunk(2, "a", 5, 1),
        vllm_chunk(1, "a", 9, 1),
        vllm_chunk(0, "b", 9, 2),
        vllm_chunk(3, "a", 5, 1),
        vllm_chunk(3, "b", 5, 3),
    ]
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False, choices_per_prompt=2)
    meter.feed(b"".join(events))
    assert (meter.prompt_tokens, meter.completion_tokens) == (9 + 5, 2 + 1 + 1 + 3)


def test_usage_in_other_places_of_a_chunk_is_left_alone() -> None:
    # a top_logprobs key "usage" and a spaced-out upstream: parsed, not cut by bytes
    odd = b'data: {"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"usage": -0.1}]}}],'
    odd += b' "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}\n\n'
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    out = meter.feed(odd)
    parsed = json.loads(out.removeprefix(b"data: "))
    assert "usage" not in parsed
    assert parsed["choices"][0]["logprobs"]["top_logprobs"] == [{"usage": -0.1}]
    assert (meter.prompt_tokens, meter.completion_tokens) == (2, 1)


def test_usage_from_json_reads_the_top_level_object() -> None:
    logprobs = [None, {"5": {"logprob": -1.0, "decoded_token": "usage"}}, {"usage": {}}]
    answer = {
        "choices": [{"text": '"usage": {"prompt_tokens": 0}'}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
        "prompt_logprobs": logprobs,
        "kv_transfer_params": {"usage": {"prompt_tokens": 0, "completion_tokens": 0}},
    }
    for separators in ((",", ":"), (", ", ": ")):
        usage = usage_from_json(json.dumps(answer, separators=separators).encode())
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 4)


def test_usage_from_json_finds_no_usage_where_there_is_none() -> None:
    nested_only = {"choices": [], "note": {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}}
    assert usage_from_json(json.dumps(nested_only).encode()) is None
    assert usage_from_json(b'[{"usage": {"prompt_tokens": 1}}]') is None
    assert usage_from_json(b'{"usage": {"prompt_tokens": 1}') is None  # cut short
    assert usage_from_json(b"not json") is None


USAGE_SHAPES = [
    {"prompt_tokens": 7, "total_tokens": 11, "completion_tokens": 4},  # vLLM's order
    {"completion_tokens": 4, "prompt_tokens": 7, "total_tokens": 11},
    {"prompt_tokens": 7, "total_tokens": 11, "completion_tokens": 4, "prompt_tokens_details": None},
    {"prompt_tokens": 7, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}},
    {"prompt_tokens": 7, "total_tokens": 7},  # no completion count: 0
]


def test_every_shape_of_chunk_usage_is_read_and_cut_as_a_parse_would() -> None:
    """vLLM's flat usage is read with one match; any other shape by the general path: the
    same counts and the same chunk without its usage either way."""
    for usage in USAGE_SHAPES:
        chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": usage}
        compact = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
        out = meter.feed(compact)
        del chunk["usage"]
        assert json.loads(out.removeprefix(b"data: ")) == chunk, usage
        assert out.endswith(b"}\n\n")
        completion = usage.get("completion_tokens") or 0
        assert (meter.prompt_tokens, meter.completion_tokens) == (7, completion), usage
    # a count that is not an integer is no usage: the chunk passes as it came, one content event
    odd = b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":7,"completion_tokens":null}}'
    meter = StreamMeter(keep_usage=False, keep_chunk_usage=False)
    assert meter.feed(odd + b"\n\n") == odd + b"\n\n"
    assert not meter.reported and meter.content_events == 1
