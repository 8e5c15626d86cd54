"""parse_body, estimate_prompt_tokens and the token caps."""

from __future__ import annotations

import pytest

from gateway.body import RequestBody, estimate_prompt_tokens, parse_body
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
    assert long - short == pytest.approx(1200 / 4, abs=2)
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
