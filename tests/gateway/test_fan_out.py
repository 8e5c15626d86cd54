"""Fan-out is bounded: ``n``, ``best_of``, the prompts of a batch and the completions of a
request (prompts x choices) each have a gateway-wide bound (``caps``) and a per-key one (the
keys file), and a body over either is a 400 naming the field, before anything is counted or
forwarded. What passes reserves every completion it asks for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.body import RequestBody, estimate_prompt_tokens, parse_body
from gateway.caps import check_fan_out
from gateway.errors import InvalidRequest
from gateway.keyfile import ApiKey, parse_keys
from gateway.settings import CapSettings
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory
from tests.gateway.doubles import Key
from tests.vllm_standin import ScriptedUpstream

MODEL = "tiny-llama"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
# A key capped at 16 tokens per completion, with no tokens-per-minute limit (the issue's).
CAPPED = Key("alice", tpm=10**12, max_tokens=16)

# (route, body, the param the 400 names): each over a default bound
OVER_DEFAULTS = [
    ("/v1/chat/completions", {**CHAT, "n": 1000}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 129}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "best_of": 1000}, "best_of"),
    ("/v1/completions", {"model": MODEL, "prompt": ["hi"] * 2049}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [[1, 2]] * 2049}, "prompt"),
    ("/v1/embeddings", {"model": MODEL, "input": ["hi"] * 2049}, "input"),
    ("/v1/embeddings", {"model": MODEL, "input": [[1]] * 2049}, "input"),
    # 2,000 prompts x n=8 at max_tokens 16: 256,000 tokens in one request
    ("/v1/completions", {"model": MODEL, "prompt": ["hi"] * 2000, "n": 8}, "n"),
]


@pytest.mark.parametrize("case", OVER_DEFAULTS, ids=lambda case: f"{case[0]} {case[2]}")
async def test_fan_out_over_the_default_bounds_is_refused_naming_the_field(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, case: tuple[str, Any, str]
) -> None:
    path, body, param = case
    gw = await start_gateway(keys={SECRET: CAPPED})
    response = await gw.client.post(path, json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "limit" in error["message"]
    assert upstream.bodies == []  # nothing forwarded
    assert gw.limiter.leases == []  # nothing reserved


# (route, body): at the default bounds, admitted
AT_DEFAULTS = [
    ("/v1/chat/completions", {**CHAT, "n": 128}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 2, "best_of": 128}),
    ("/v1/completions", {"model": MODEL, "prompt": ["hi"] * 2048}),
    ("/v1/completions", {"model": MODEL, "prompt": ["hi"] * 16, "n": 128}),
    ("/v1/completions", {"model": MODEL, "prompt": list(range(5000))}),  # one prompt of ids
    ("/v1/embeddings", {"model": MODEL, "input": ["hi"] * 2048}),
]


@pytest.mark.parametrize(("path", "body"), AT_DEFAULTS)
async def test_fan_out_at_the_default_bounds_is_served(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, body: dict[str, Any]
) -> None:
    gw = await start_gateway(keys={SECRET: CAPPED})
    response = await gw.client.post(path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text


def limits(**given: int) -> Key:
    return Key("alice", **given)  # type: ignore[arg-type]


def parsed(body: dict[str, Any], generates: bool = True) -> RequestBody:
    return parse_body(json.dumps(body).encode(), generates=generates)


@pytest.mark.parametrize(
    ("field", "body", "param"),
    [
        ("max_n", {**CHAT, "n": 5}, "n"),
        ("max_best_of", {"model": MODEL, "prompt": "hi", "best_of": 5}, "best_of"),
        ("max_prompts", {"model": MODEL, "prompt": ["a"] * 5}, "prompt"),
        ("max_completions", {"model": MODEL, "prompt": ["a"] * 5}, "n"),
        ("max_completions", {"model": MODEL, "prompt": "a", "n": 5}, "n"),
    ],
)
def test_a_keys_bound_is_the_lower_one(field: str, body: dict[str, Any], param: str) -> None:
    caps = CapSettings()
    check_fan_out(parsed(body), limits(**{field: 5}), caps)  # at the key's bound
    with pytest.raises(InvalidRequest) as refused:
        check_fan_out(parsed(body), limits(**{field: 4}), caps)
    assert refused.value.param == param
    assert "limit of 4" in refused.value.message
    # the gateway's bound holds for a key that names a higher one
    with pytest.raises(InvalidRequest):
        check_fan_out(parsed(body), limits(**{field: 100}), CapSettings(**{field: 4}))


def test_the_gateway_bounds_are_settings() -> None:
    body = parsed({**CHAT, "n": 200})
    with pytest.raises(InvalidRequest):
        check_fan_out(body, None, CapSettings())  # anonymous: the gateway's bounds
    check_fan_out(body, None, CapSettings(max_n=200, max_completions=200))
    with pytest.raises(ValidationError):
        CapSettings(max_n=0)


def test_embeddings_inputs_are_bounded_as_prompts() -> None:
    body = parsed({"model": MODEL, "input": ["a"] * 3}, generates=False)
    check_fan_out(body, limits(max_prompts=3), CapSettings())
    with pytest.raises(InvalidRequest) as refused:
        check_fan_out(body, limits(max_prompts=2), CapSettings())
    assert refused.value.param == "input"


def test_the_keys_file_holds_the_per_key_bounds() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    text = (
        f"keys:\n  - name: batch\n    sha256: {digest}\n    max_n: 4\n    max_best_of: 8\n"
        "    max_prompts: 64\n    max_completions: 128\n"
    )
    (key,) = parse_keys(text)
    assert (key.max_n, key.max_best_of, key.max_prompts, key.max_completions) == (4, 8, 64, 128)
    with pytest.raises(ValidationError):
        ApiKey(name="x", sha256=digest, max_n=0)


async def test_what_passes_reserves_prompts_times_choices_times_max_tokens(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    """The issue's request, allowed by raised bounds, reserves its 256,000 output tokens."""
    key = Key("alice", tpm=10**12, max_tokens=16)
    gw = await start_gateway(keys={SECRET: key}, caps={"max_completions": 16000})
    body = {"model": MODEL, "prompt": ["hi"] * 2000, "n": 8, "max_tokens": 999}
    response = await gw.client.post("/v1/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert gw.limiter.leases[0].reserved == estimate_prompt_tokens(body) + 2000 * 8 * 16
