"""The agent APIs through the gateway: ``/v1/responses`` and ``/v1/messages`` against the
vLLM stand-in (which answers them as vLLM does): auth (a bearer or ``x-api-key``), the cap
written in each route's own field, the reservation, billing from their usage objects and
stream events, timeouts and disconnects, and errors in each route's envelope."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.agent_apis import MESSAGES, RESPONSES
from gateway.body import parse_body
from gateway.errors import InvalidRequest
from tests.gateway.conftest import (
    AUTH,
    SECRET,
    GatewayFactory,
    leave_after_two_chunks,
    wait_until,
)
from tests.gateway.doubles import Key, RecordingLimiter
from tests.vllm_standin import ScriptedUpstream
from tests.vllm_standin.agent_answers import AGENT_SHAPES

RESPONSE = {"model": "tiny-llama", "input": "hello there"}
MESSAGE = {
    "model": "tiny-llama",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello there"}],
}
ROUTES = {"/v1/responses": RESPONSE, "/v1/messages": MESSAGE}
CAP_FIELD = {"/v1/responses": "max_output_tokens", "/v1/messages": "max_tokens"}
X_API_KEY = {"x-api-key": SECRET}


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of each named SSE event."""
    found = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def tokens(gw: Any, direction: str, key: str = "alice") -> float:
    return gw.metric("vkit_gateway_tokens_total", {"key": key, "direction": direction})


@pytest.mark.parametrize("path", list(ROUTES))
async def test_a_whole_answer_is_relayed_and_billed_from_its_usage(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str
) -> None:
    gw = await start_gateway()
    response = await gw.client.post(path, json=ROUTES[path], headers=AUTH)
    assert response.status_code == 200
    assert response.json()["usage"]["output_tokens"] == 4
    lease = gw.limiter.leases[0]
    assert lease.settled == [upstream.script.prompt_tokens + 4]
    assert tokens(gw, "prompt") == upstream.script.prompt_tokens
    assert tokens(gw, "completion") == 4
    labels = {"key": "alice", "model": "tiny-llama", "status": "200"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1
    assert gw.metric("vkit_gateway_usage_missing_total", {"key": "alice"}) == 0


@pytest.mark.parametrize("path", list(ROUTES))
async def test_a_stream_is_relayed_whole_and_billed_from_its_events(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str
) -> None:
    upstream.script.chunks = 5
    upstream.script.tokens_per_chunk = 2  # a delta may hold several tokens, as vLLM's do
    gw = await start_gateway()
    response = await gw.client.post(path, json={**ROUTES[path], "stream": True}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events(response.text)]
    assert names[-1] in ("response.completed", "message_stop")
    assert "error" not in names
    assert "data: [DONE]" not in response.text  # neither API has it
    assert "stream_options" not in upstream.bodies[-1]  # chat's, not theirs
    assert gw.limiter.leases[0].settled == [upstream.script.prompt_tokens + 10]
    assert tokens(gw, "completion") == 10


@pytest.mark.parametrize("path", list(ROUTES))
async def test_the_cap_is_written_in_the_routes_own_field(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str
) -> None:
    field = CAP_FIELD[path]
    gw = await start_gateway(keys={"k": Key("bob", max_tokens=3)})
    body = {**ROUTES[path], field: 50}
    response = await gw.client.post(path, json=body, headers={"Authorization": "Bearer k"})
    assert response.status_code == 200
    sent = upstream.bodies[-1]
    assert sent[field] == 3
    other = "max_tokens" if field == "max_output_tokens" else "max_output_tokens"
    assert other not in sent
    # the reservation holds the prompt bound plus the capped output
    assert gw.limiter.leases[0].reserved > 3


async def test_a_messages_body_without_max_tokens_gets_the_default_cap(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(caps={"default_max_tokens": 5})
    body = {k: v for k, v in MESSAGE.items() if k != "max_tokens"}
    response = await gw.client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 200
    assert upstream.bodies[-1]["max_tokens"] == 5  # Anthropic's required field, written in


@pytest.mark.parametrize("path", list(ROUTES))
async def test_over_the_cap_is_refused_naming_the_routes_field(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str
) -> None:
    gw = await start_gateway(caps={"max_tokens": 10, "over_cap": "reject"})
    field = CAP_FIELD[path]
    response = await gw.client.post(path, json={**ROUTES[path], field: 11}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["message"]
    if path == "/v1/messages":
        assert response.json()["type"] == "error"
        assert error["type"] == "invalid_request_error"
    else:
        assert error["param"] == field
    assert upstream.bodies == []


async def test_anthropic_clients_authenticate_with_x_api_key(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    response = await gw.client.post("/v1/messages", json=MESSAGE, headers=X_API_KEY)
    assert response.status_code == 200
    assert gw.limiter.leases[0].settled  # the key's lease: billed to alice
    assert tokens(gw, "completion") == 4


async def test_messages_errors_are_in_anthropics_envelope(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(limiter=RecordingLimiter(refuse_above=10))
    missing = await gw.client.post("/v1/messages", json=MESSAGE)
    assert missing.status_code == 401
    assert missing.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": missing.json()["error"]["message"]},
    }
    wrong = await gw.client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": "nope"})
    assert wrong.json()["error"]["type"] == "authentication_error"
    limited = await gw.client.post("/v1/messages", json=MESSAGE, headers=X_API_KEY)
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["retry-after"] == "3"
    bad = await gw.client.post(
        "/v1/messages", json={**MESSAGE, "messages": "hi"}, headers=X_API_KEY
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "type": "invalid_request_error",
        "message": "'messages' must be a list of messages",
    }
    unknown = await gw.client.post(
        "/v1/messages", json={**MESSAGE, "model": "other"}, headers=X_API_KEY
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    no_route = await gw.client.post("/v1/messages/count_tokens", json=MESSAGE, headers=AUTH)
    assert no_route.status_code == 404
    assert no_route.json()["type"] == "error"
    assert upstream.bodies == []


async def test_responses_errors_stay_in_the_openai_envelope(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    missing = await gw.client.post("/v1/responses", json=RESPONSE)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    bad = await gw.client.post("/v1/responses", json={**RESPONSE, "input": 5}, headers=AUTH)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "input"


async def test_upstream_errors_on_messages_are_rewritten_into_anthropics_envelope(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    # vLLM answers its request validation errors on /v1/messages in the OpenAI envelope,
    # and others with its exception's name as the type
    upstream.script.statuses = [400, 404]
    upstream.script.error_body = {
        "error": {"message": "bad field", "type": "Bad Request", "param": "x", "code": 400}
    }
    first = await gw.client.post("/v1/messages", json=MESSAGE, headers=AUTH)
    assert first.status_code == 400
    assert first.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad field"},
    }
    upstream.script.error_body = None
    second = await gw.client.post("/v1/messages", json=MESSAGE, headers=AUTH)
    assert second.status_code == 404
    assert second.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "scripted"},
    }


@pytest.mark.parametrize(
    ("field", "value"), [("background", True), ("previous_response_id", "resp_1")]
)
async def test_responses_that_escape_the_accounting_are_refused(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, field: str, value: object
) -> None:
    gw = await start_gateway()
    response = await gw.client.post("/v1/responses", json={**RESPONSE, field: value}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert upstream.bodies == []


# fault -> (its script, the gateway's timeouts, the error type: OpenAI's, Anthropic's)
FAULTS = {
    "stalled": ({"stall_after": 3}, {"idle": 0.3}, ("timeout_error", "timeout_error")),
    "broken": ({"break_after": 3}, {}, ("upstream_error", "api_error")),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("path", list(ROUTES))
async def test_a_cut_stream_ends_with_an_error_event_in_the_routes_envelope_and_is_billed(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, fault: str
) -> None:
    script, timeouts, (openai_type, anthropic_type) = FAULTS[fault]
    upstream.script.chunks = 10
    for name, value in script.items():
        setattr(upstream.script, name, value)
    gw = await start_gateway(timeouts=timeouts)
    response = await gw.client.post(path, json={**ROUTES[path], "stream": True}, headers=AUTH)
    assert response.status_code == 200
    name, data = events(response.text)[-1]
    assert name == "error"
    assert data["type"] == "error"
    assert data["error"]["type"] == (anthropic_type if path == MESSAGES.path else openai_type)
    await wait_until(lambda: bool(gw.limiter.leases[0].settled))
    # three deltas relayed, at least a token each
    assert tokens(gw, "completion") == 3
    if path == MESSAGES.path:  # message_start reported the prompt
        assert tokens(gw, "prompt") == upstream.script.prompt_tokens
    else:  # Responses reports usage only at its end: the estimate
        estimate = parse_body(json.dumps(RESPONSE).encode(), api=RESPONSES)
        assert tokens(gw, "prompt") == estimate.prompt_tokens_estimate


@pytest.mark.parametrize("path", list(ROUTES))
async def test_a_client_that_leaves_mid_stream_aborts_the_upstream_and_is_billed(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str
) -> None:
    upstream.script.chunks = 100
    upstream.script.chunk_delay = 0.05
    gw = await start_gateway()
    billed = await leave_after_two_chunks(gw, path, {**ROUTES[path], "stream": True})
    await wait_until(lambda: upstream.closed_early == 1)
    assert 1 <= billed < upstream.script.prompt_tokens + 100 + gw.limiter.leases[0].reserved
    labels = {"key": "alice", "model": "tiny-llama", "status": "499"}
    assert gw.metric("vkit_gateway_requests_total", labels) == 1


async def test_a_first_byte_timeout_on_messages_is_anthropics_timeout_error(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.head_delay = 5
    gw = await start_gateway(timeouts={"first_byte": 0.3}, retry={"attempts": 1})
    response = await gw.client.post("/v1/messages", json=MESSAGE, headers=AUTH)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    await wait_until(lambda: upstream.closed_early == 1)


def test_the_reservation_bounds_the_prompt_as_vllm_renders_it() -> None:
    """What the bound counts, item by item: texts by their bytes, images as chat's media,
    tool structures at twice their JSON; system and instructions as a message each."""
    plain = parse_body(json.dumps(MESSAGE).encode(), api=MESSAGES)
    with_system = parse_body(json.dumps({**MESSAGE, "system": "x" * 100}).encode(), api=MESSAGES)
    assert with_system.prompt_tokens_estimate >= plain.prompt_tokens_estimate + 100
    image = {"type": "image", "source": {"type": "base64", "data": "A" * 50_000}}
    pictured = {**MESSAGE, "messages": [{"role": "user", "content": [image]}]}
    counted = parse_body(json.dumps(pictured).encode(), api=MESSAGES).prompt_tokens_estimate
    assert 1024 <= counted < 2000  # the image's MEDIA_TOKENS, not its 50 kB of base64
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    tooled = parse_body(json.dumps({**MESSAGE, "tools": [tool]}).encode(), api=MESSAGES)
    assert tooled.prompt_tokens_estimate >= plain.prompt_tokens_estimate + 2 * len(json.dumps(tool))
    items = {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "y" * 300}]},
            {"type": "function_call", "name": "f", "arguments": '{"a": 1}', "call_id": "c"},
            {"type": "function_call_output", "call_id": "c", "output": "z" * 200},
        ],
    }
    bound = parse_body(json.dumps(items).encode(), api=RESPONSES).prompt_tokens_estimate
    assert bound >= 300 + 200 + len("be brief")


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        (RESPONSES, {"model": "m"}, "input"),
        (RESPONSES, {"model": "m", "input": {"a": 1}}, "input"),
        (RESPONSES, {"model": "m", "input": "x", "instructions": 3}, "instructions"),
        (RESPONSES, {"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        (RESPONSES, {"model": "m", "input": "x", "stream": "yes"}, "stream"),
        (MESSAGES, {"model": "m"}, "messages"),
        (MESSAGES, {"model": "m", "messages": [], "system": 5}, "system"),
        (MESSAGES, {"model": "m", "messages": [], "max_tokens": -1}, "max_tokens"),
        (MESSAGES, {"messages": []}, "model"),
    ],
)
def test_a_bad_agent_body_is_refused_naming_the_field(api: Any, body: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_body(json.dumps(body).encode(), api=api)
    assert refused.value.param == param


async def test_concurrent_agent_requests_each_settle_their_own_lease(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunk_delay = 0.01
    gw = await start_gateway()
    calls = [
        gw.client.post(path, json={**body, "stream": stream}, headers=AUTH)
        for path, body in ROUTES.items()
        for stream in (False, True)
    ]
    answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * 4
    await wait_until(lambda: all(lease.settled for lease in gw.limiter.leases))
    assert sorted(lease.settled[0] for lease in gw.limiter.leases) == [11] * 4


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_the_event_meter_reads_a_stream_however_it_is_split(path: str, size: int) -> None:
    """Fed in pieces of any size, the meter passes every byte on, in order, and reads the
    usage and the end (the stand-in's stream is vLLM's, byte for byte in shape)."""
    shape = AGENT_SHAPES[path]
    usage = shape.usage(7, 5)
    stream = b"".join(
        [
            *shape.opening("m", 7),
            *(shape.delta(i) for i in range(5)),
            *shape.closing("m", 5, usage),
        ]
    )
    meter = (RESPONSES if path == RESPONSES.path else MESSAGES).meter()
    relayed = b"".join(meter.feed(stream[at : at + size]) for at in range(0, len(stream), size))
    assert relayed + meter.flush() == stream
    assert meter.done and meter.reported
    assert (meter.prompt_tokens, meter.completion_tokens, meter.content_events) == (7, 5, 5)
