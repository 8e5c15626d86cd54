"""parse_body, estimate_prompt_tokens and the token caps."""

from __future__ import annotations

import json

import pytest

from gateway.body import (
    MAX_DEPTH,
    MEDIA_TOKENS,
    RequestBody,
    estimate_prompt_tokens,
    parse_body,
)
from gateway.body_values import Shape, body_shape, check_values
from gateway.caps import apply_token_cap, effective_max_tokens
from gateway.errors import InvalidRequest
from gateway.settings import CapSettings


def test_parse_reads_the_fields_it_needs() -> None:
    body = parse_body(
        b'{"model": "m", "stream": true, "max_tokens": 9, "max_completion_tokens": 7,'
        b' "stream_options": {"include_usage": true}, "messages": []}'
    )
    assert (body.model, body.stream, body.max_tokens, body.include_usage) == ("m", True, 7, True)


def test_null_fields_count_as_absent() -> None:
    body = parse_body(b'{"model": "m", "stream": null, "max_tokens": null}')
    assert (body.stream, body.max_tokens, body.include_usage) == (False, None, False)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"", b"null", b'"s"', b'{"model": ""}'])
def test_bad_bodies_raise_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_body(raw)


def test_prompt_estimate_grows_with_the_text() -> None:
    short = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hi"}]})
    long = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hi " * 400}]})
    assert long - short == 1200 - 2  # the byte bound: one token per byte of text
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}
    assert estimate_prompt_tokens(parts) >= 10
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert estimate_prompt_tokens({}) == 1


@pytest.mark.parametrize(
    ("requested", "key_cap", "expected"),
    [(None, None, 100), (None, 50, 50), (30, None, 30), (5000, None, 1000), (80, 60, 60)],
)
def test_effective_max_tokens_clamps(
    requested: int | None, key_cap: int | None, expected: int
) -> None:
    caps = CapSettings(default_max_tokens=100, max_tokens=1000)
    assert effective_max_tokens(requested, key_cap, caps) == expected


def test_reject_mode_refuses_over_the_cap() -> None:
    caps = CapSettings(max_tokens=10, over_cap="reject")
    with pytest.raises(InvalidRequest):
        effective_max_tokens(11, None, caps)
    assert effective_max_tokens(10, None, caps) == 10


def test_apply_token_cap_reports_whether_the_body_changed() -> None:
    caps = CapSettings(default_max_tokens=16, max_tokens=64)
    body: RequestBody = parse_body(b'{"model": "m", "max_tokens": 8}')
    assert apply_token_cap(body, None, caps) is False
    body = parse_body(b'{"model": "m"}')
    assert apply_token_cap(body, None, caps) is True
    assert body.data["max_tokens"] == 16


def test_null_and_conflicting_lengths_end_as_one_capped_value_in_both_fields() -> None:
    caps = CapSettings(default_max_tokens=16, max_tokens=64)
    for raw in (
        b'{"model": "m", "max_tokens": null, "max_completion_tokens": 1}',
        b'{"model": "m", "max_tokens": 1, "max_completion_tokens": 9999}',
        b'{"model": "m", "max_tokens": 9999, "max_completion_tokens": 1}',
    ):
        body = parse_body(raw)
        assert apply_token_cap(body, None, caps) is True
        assert (body.data["max_tokens"], body.data["max_completion_tokens"]) == (1, 1)
    body = parse_body(b'{"model": "m", "max_completion_tokens": null}')
    apply_token_cap(body, None, caps)
    assert (body.data["max_tokens"], body.data["max_completion_tokens"]) == (16, 16)


@pytest.mark.parametrize(
    ("raw", "completions"),
    [
        (b'{"model": "m"}', 1),
        (b'{"model": "m", "n": 3}', 3),
        (b'{"model": "m", "n": 2, "best_of": 4}', 4),
        (b'{"model": "m", "n": null, "best_of": null}', 1),
        (b'{"model": "m", "prompt": ["a", "b", "c"], "n": 2}', 6),
        (b'{"model": "m", "prompt": [[1, 2], [3]]}', 2),
        (b'{"model": "m", "prompt": [1, 2, 3]}', 1),
        (b'{"model": "m", "prompt": []}', 1),
    ],
)
def test_completions_counts_choices_and_batch_prompts(raw: bytes, completions: int) -> None:
    assert parse_body(raw).completions == completions


def test_the_reservation_multiplies_the_estimate_in_one_place() -> None:
    body = parse_body(b'{"model": "m", "prompt": ["aaaa", "bbbbbbbb"], "n": 3}')
    body.max_tokens = 10
    assert body.reservation == estimate_prompt_tokens(body.data) + 10 * 2 * 3


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "prompt": "\\ud800"}',
        b'{"model": "m", "prompt": "\\udfff x"}',
        b'{"model": "m", "x": {"\\uDBFF": 1}}',
        b'{"model": "m", "prompt": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes
        b'{"model": "m", "prompt": "\xff"}',  # not UTF-8 at all
        b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "prompt": ' + b"[" * 129 + b"]" * 129 + b"}",
        b'{"model": "m", "stream_options": {"continuous_usage_stats": "yes"}}',
    ],
)
def test_hostile_bodies_raise_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_body(raw)


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    body = parse_body(b'{"model": "m", "prompt": "\\ud83d\\ude00 \\\\ud800"}')
    assert body.data["prompt"] == "\N{GRINNING FACE} \\ud800"
    # 128 levels in all, the body's own object included
    assert parse_body(b'{"model": "m", "p": ' + b"[" * 127 + b"]" * 127 + b"}").model == "m"


def test_stream_is_refused_where_nothing_is_generated() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_body(b'{"model": "m", "input": "x", "stream": true}', generates=False)
    assert refused.value.param == "stream"
    assert parse_body(b'{"model": "m", "input": "x", "stream": false}', generates=False)


def test_media_parts_are_estimated_as_media_not_as_text() -> None:
    text = {"type": "text", "text": "hi"}
    url = "data:image/png;base64," + "A" * 400_000
    image = {"type": "image_url", "image_url": {"url": url}}
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 100, "format": "wav"}}
    untyped = {"image_url": {"url": "https://example.com/a.png"}}

    def estimate(*parts: dict[str, object]) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": [text, *parts]}]}
        return parse_body(json.dumps(body).encode()).prompt_tokens_estimate

    base = estimate()
    assert estimate(image) - base == MEDIA_TOKENS["image"]  # a picture, not its base64
    assert estimate(audio) - base == MEDIA_TOKENS["audio"]
    assert estimate(untyped, image) - base == 2 * MEDIA_TOKENS["image"]
    assert min(MEDIA_TOKENS.values()) >= 256


def test_values_are_counted_outside_strings_only() -> None:
    """Commas, brackets, escaped quotes and backslashes inside strings count for nothing:
    ``{"a": <string>, "b": [1, 2, 3]}`` holds 6 values whatever the string holds."""
    for text in ("x, [y], {z}", 'say \\"a, b\\"', "ends in a backslash \\\\", '\\\\\\", [[['):
        raw = b'{"a": "%s", "b": [1, 2, 3]}' % text.encode()
        json.loads(raw)  # valid JSON
        assert body_shape(raw, 6) == Shape(values=6, containers=2)
        check_values(raw, 6, 2)
        with pytest.raises(InvalidRequest) as refused:
            check_values(raw, 5, 2)
        assert refused.value.code == "too_many_values"
        with pytest.raises(InvalidRequest, match="more than 1 JSON arrays and objects"):
            check_values(raw, 6, 1)


def test_a_body_of_many_values_is_refused_before_it_is_parsed() -> None:
    raw = b'{"model": "m", "prompt": "x", "tools": [' + b", ".join([b"[ ]"] * 100) + b"]}"
    assert body_shape(raw, 10) == Shape(values=1 + 3 + 100, containers=102)
    assert parse_body(raw, max_values=104, max_containers=102).model == "m"
    with pytest.raises(InvalidRequest, match="more than 103 JSON values"):
        parse_body(raw, max_values=103)
    with pytest.raises(InvalidRequest, match="more than 101 JSON arrays"):
        parse_body(raw, max_containers=101)
    assert body_shape(b'{"a": [""], "b": {"c": [ ]}}', 10) == Shape(values=5, containers=4)
    many_strings = b"[" + b",".join([b'""'] * 1000) + b"]"
    assert body_shape(many_strings, 10).values > 10  # stops at the strings' count


def test_nesting_is_measured_level_by_level() -> None:
    def nested(levels: int) -> bytes:  # the body's own object is the first level
        inner = "[" * (levels - 1) + "]" * (levels - 1)
        return ('{"model": "m", "x": ' + inner + ', "y": [[], {}]}').encode()

    assert parse_body(nested(MAX_DEPTH)).model == "m"
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_body(nested(MAX_DEPTH + 1))
