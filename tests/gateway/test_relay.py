"""StreamMeter and usage_from_json: pure functions over bytes."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.relay import StreamMeter, usage_from_json


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
