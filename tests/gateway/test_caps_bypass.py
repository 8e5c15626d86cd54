"""No body gets past the caps, the reservation or the parser.

Every way a body can name (or omit) its output length ends capped in the body that goes
upstream, whichever way the upstream reads it; the reservation counts every completion a
body asks for (``n``, ``best_of``, batch prompts, media parts); hostile bodies (lone
surrogates, deep nesting) get a 4xx envelope, never a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from gateway.body import estimate_prompt_tokens
from gateway.keyfile import ApiKey
from gateway.limits import MemoryLimiter
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory
from tests.vllm_standin import ScriptedUpstream

MODEL = "tiny-llama"
CAP = 8
CAPS = {"default_max_tokens": 4, "max_tokens": CAP}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
COMPLETION = {"model": MODEL, "prompt": "hello there"}
ROUTES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}

# Every way to name, or not name, the output length (None: the field is sent as null).
LENGTHS: list[dict[str, Any]] = [
    {},
    {"max_tokens": None},
    {"max_completion_tokens": None},
    {"max_tokens": None, "max_completion_tokens": 1},
    {"max_tokens": 1, "max_completion_tokens": None},
    {"max_tokens": 1, "max_completion_tokens": 9999},
    {"max_tokens": 9999, "max_completion_tokens": 1},
    {"max_completion_tokens": 9999},
    {"max_completion_tokens": 1},
    {"max_tokens": 9999},
]


def output_limit_read_by_vllm(path: str, body: dict[str, Any]) -> object:
    """What vLLM 0.32 generates up to: chat reads max_completion_tokens, else max_tokens;
    completions read max_tokens only (null there means vLLM's default, not a cap)."""
    if path == "/v1/chat/completions" and body.get("max_completion_tokens") is not None:
        return body["max_completion_tokens"]
    return body.get("max_tokens")


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("length", LENGTHS, ids=lambda d: json.dumps(d))
async def test_every_way_to_name_the_output_length_ends_capped(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, length: dict[str, Any]
) -> None:
    gw = await start_gateway(caps=CAPS)
    response = await gw.client.post(path, json={**ROUTES[path], **length}, headers=AUTH)
    assert response.status_code == 200, response.text
    sent = upstream.bodies[-1]
    limit = output_limit_read_by_vllm(path, sent)
    assert isinstance(limit, int) and 1 <= limit <= CAP, sent
    for field in ("max_tokens", "max_completion_tokens"):
        if field in sent:  # no null and nothing above the cap, in either field
            assert isinstance(sent[field], int) and sent[field] <= CAP, sent
    reserved = gw.limiter.leases[0].reserved
    assert reserved == estimate_prompt_tokens(ROUTES[path]) + limit


def first_wins(raw: bytes) -> dict[str, Any]:
    """A JSON reader that keeps the first of duplicate keys (Python's keeps the last)."""

    def keep_first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in pairs:
            found.setdefault(name, value)
        return found

    result: dict[str, Any] = json.loads(raw, object_pairs_hook=keep_first)
    return result


DUPLICATES = [
    b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 9999, "max_tokens": 1}',
    b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 1, "max_tokens": 9999}',
    b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "max_tokens": 3}',
    b'{"model": "tiny-llama", "prompt": "hi", "n": 1, "n": 5, "max_tokens": 2}',
    b'{"model": "tiny-llama", "prompt": "hi", "stream": true, "stream": false}',
    b'{"model": "tiny-llama", "prompt": "hi", "max_tokens": 2, "stream": true,'
    b' "stream_options": {"include_usage": true, "include_usage": false}}',
]


@pytest.mark.parametrize("raw", DUPLICATES)
async def test_duplicate_keys_read_the_same_on_both_sides(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, raw: bytes
) -> None:
    gw = await start_gateway(caps=CAPS)
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post("/v1/completions", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    forwarded = upstream.raw_bodies[-1]
    assert first_wins(forwarded) == json.loads(forwarded)  # one reading, whatever the parser
    sent = json.loads(forwarded)
    assert isinstance(sent["max_tokens"], int) and sent["max_tokens"] <= CAP
    reserved = gw.limiter.leases[0].reserved
    prompt = estimate_prompt_tokens(json.loads(raw))
    assert reserved == prompt + sent["max_tokens"] * sent.get("n", 1)


# (route, extra fields, completions the body asks for per max_tokens)
MULTIPLIED = [
    ("/v1/completions", {"n": 3}, 3),
    ("/v1/completions", {"n": 2, "best_of": 5}, 5),
    ("/v1/completions", {"n": 4, "use_beam_search": True}, 4),
    ("/v1/completions", {"prompt": ["a", "bb", "ccc", "dddd", "eeeee"]}, 5),
    ("/v1/completions", {"prompt": [[1, 2], [3], [4, 5, 6], [7]], "n": 2}, 8),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 1),  # one prompt of token ids
    ("/v1/chat/completions", {"n": 3}, 3),
    ("/v1/chat/completions", {"n": None}, 1),
]


@pytest.mark.parametrize(("path", "extra", "completions"), MULTIPLIED)
async def test_the_reservation_counts_every_completion(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    path: str,
    extra: dict[str, Any],
    completions: int,
) -> None:
    gw = await start_gateway(caps=CAPS)
    body = {**ROUTES[path], "max_tokens": 5, **extra}
    response = await gw.client.post(path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert gw.limiter.leases[0].reserved == estimate_prompt_tokens(body) + 5 * completions


@pytest.mark.parametrize(
    "extra",
    [{"n": 0}, {"n": -1}, {"n": "2"}, {"n": 1.5}, {"n": True}, {"best_of": 0}, {"best_of": "x"}],
)
async def test_bad_choice_counts_are_refused(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, extra: dict[str, Any]
) -> None:
    gw = await start_gateway(caps=CAPS)
    response = await gw.client.post("/v1/completions", json={**COMPLETION, **extra}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == next(iter(extra))
    assert upstream.bodies == []


def limited_key(tpm: int) -> ApiKey:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    return ApiKey(name="alice", sha256=digest, rpm=1000, tpm=tpm, concurrency=100)


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/chat/completions", {"n": 16}),
        ("/v1/completions", {"prompt": ["p"] * 64}),
    ],
)
async def test_concurrent_multi_completion_requests_stay_within_the_tpm(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, extra: dict[str, Any]
) -> None:
    body = {**ROUTES[path], "max_tokens": CAP, **extra}
    one = estimate_prompt_tokens(body) + CAP * (16 if "n" in extra else 64)
    tpm = 2 * one + 1  # room for exactly two at a time
    upstream.script.head_delay = 0.3  # all ten are in flight together
    gw = await start_gateway(
        caps=CAPS, keys={SECRET: limited_key(tpm)}, limiter=MemoryLimiter(clock=lambda: 1000.0)
    )
    responses = await asyncio.gather(
        *(gw.client.post(path, json=body, headers=AUTH) for _ in range(10))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200] + [429] * 8, [r.text for r in responses]


async def test_a_request_larger_than_the_whole_budget_is_refused(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(
        caps=CAPS, keys={SECRET: limited_key(500)}, limiter=MemoryLimiter(clock=lambda: 1000.0)
    )
    body = {**CHAT, "max_tokens": CAP, "n": 64}  # 512 output tokens alone, over the 500
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream.bodies == []


async def test_media_parts_count_in_the_reservation(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    text = {"type": "text", "text": "what is this?"}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    gw = await start_gateway(caps=CAPS)
    reserved = []
    for content in ([text], [text, image], [text, image, audio]):
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
        response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        reserved.append(gw.limiter.leases[-1].reserved)
    # a picture or a clip is hundreds of tokens to the model, not the length of its URL
    assert reserved[1] - reserved[0] >= 256
    assert reserved[2] - reserved[1] >= 256


def with_lone_surrogate(body: dict[str, Any]) -> str:
    """``body`` as JSON, each "@" a lone UTF-16 surrogate written as the escape \\ud800."""
    return json.dumps(body).replace("@", "\\ud800")


def user(content: object) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


HOSTILE = [
    ("/v1/chat/completions", with_lone_surrogate(user("a@b"))),
    ("/v1/chat/completions", with_lone_surrogate(user([{"type": "text", "text": "@"}]))),
    ("/v1/completions", with_lone_surrogate({"model": MODEL, "prompt": "@"})),
    ("/v1/completions", with_lone_surrogate({"model": MODEL, "prompt": ["ok", "@"]})),
    ("/v1/embeddings", with_lone_surrogate({"model": MODEL, "input": "@"})),
    ("/v1/completions", with_lone_surrogate({"model": "tiny-@", "prompt": "hi"})),
    ("/v1/completions", with_lone_surrogate({"model": MODEL, "prompt": "hi", "user": "@"})),
    ("/v1/completions", with_lone_surrogate({"model": MODEL, "prompt": "hi", "@": 1})),
]


@pytest.mark.parametrize(("path", "raw"), HOSTILE)
async def test_lone_surrogates_are_a_400_envelope(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, raw: str
) -> None:
    gw = await start_gateway()
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post(path, content=raw.encode(), headers=headers)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert upstream.bodies == []


async def test_surrogate_pairs_are_fine(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    raw = b'{"model": "tiny-llama", "prompt": "smile \\ud83d\\ude00"}'
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post("/v1/completions", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert upstream.bodies[-1]["prompt"] == "smile \N{GRINNING FACE}"


def nested(depth: int, field: str) -> bytes:
    return b'{"model": "tiny-llama", "%s": %s1%s}' % (field.encode(), b"[" * depth, b"]" * depth)


@pytest.mark.parametrize("depth", [100_000, 5_000, 990, 200, 20])
@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages"), ("/v1/completions", "x")],
)
async def test_deep_nesting_is_a_400_envelope(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, depth: int, path: str, field: str
) -> None:
    gw = await start_gateway()
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post(path, content=nested(depth, field), headers=headers)
    assert response.status_code < 500, response.text
    if depth > 128:  # deeper than any OpenAI request needs: refused before it goes upstream
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert upstream.bodies == []
