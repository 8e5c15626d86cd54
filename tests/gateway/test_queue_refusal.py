"""vLLM's admission refusal (503 + its queue-full body): another replica, then the gateway's
own 503 with ``Retry-After``; any other 503 keeps its old path
(docs/vllm-server.md#admission-caps)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.upstream_call import UPSTREAMS_FULL, queue_refusal
from tests.gateway.conftest import AUTH, GatewayFactory
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# What vLLM 0.32 answers past --max-num-queued-reqs / --max-num-queued-tokens, word for word
# (QueueOverflowError, MaxQueuedTokensError in vllm/exceptions.py; create_error_response).
QUEUE_FULL = {
    "error": {
        "message": "The engine is currently busy and cannot accept new requests. "
        "Please try again later or on a different instance.",
        "type": "Service Unavailable",
        "param": None,
        "code": 503,
    }
}
BACKLOG_FULL = {
    "error": {
        "message": "The engine has reached its prefill token backlog limit. "
        "Please try again later or on a different instance.",
        "type": "Service Unavailable",
        "param": None,
        "code": 503,
    }
}
REFUSED_REQS = "vkit_gateway_upstream_refused_total"


def _with(body: dict[str, Any], **error: object) -> bytes:
    return json.dumps({"error": {**body["error"], **error}}).encode()


def test_both_refusals_are_recognised_by_status_and_body() -> None:
    assert queue_refusal(503, json.dumps(QUEUE_FULL).encode()) == "max_num_queued_reqs"
    assert queue_refusal(503, json.dumps(BACKLOG_FULL).encode()) == "max_num_queued_tokens"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (502, json.dumps(QUEUE_FULL).encode()),  # the body, another status
        (503, _with(QUEUE_FULL, message="The engine is currently busy.")),  # another message
        (503, _with(QUEUE_FULL, type="InternalServerError")),
        (503, _with(QUEUE_FULL, code=500)),
        (503, b'{"error": "Service Unavailable"}'),
        (503, b"<html>503 Service Temporarily Unavailable</html>"),  # NGINX's own page
        (503, b""),
        (503, json.dumps(QUEUE_FULL).encode() + b" " * 600),  # longer than any refusal
    ],
)
def test_any_other_answer_is_not_a_refusal(status: int, body: bytes) -> None:
    assert queue_refusal(status, body) is None


async def test_a_full_replica_sends_the_request_to_the_next_one(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    async with ScriptedUpstream() as other:
        gw = await start_gateway(upstreams=[upstream.url, other.url], routing="round_robin")
        upstream.script.statuses, upstream.script.error_body = [503], QUEUE_FULL
        # round robin: one of the two requests goes to the full replica first, then to the other
        for _ in range(2):
            served = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert served.status_code == 200, served.text
        assert (len(upstream.bodies), len(other.bodies)) == (1, 2)
        assert gw.metric(REFUSED_REQS, {"reason": "max_num_queued_reqs"}) == 0


async def test_when_every_replica_refuses_the_gateway_answers_503_once_per_replica(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    async with ScriptedUpstream() as other:
        gw = await start_gateway(
            upstreams=[upstream.url, other.url],
            retry={"attempts": 4, "backoff_initial": 0.01, "backoff_max": 0.02},
        )
        upstream.script.statuses, upstream.script.error_body = [503] * 4, BACKLOG_FULL
        other.script.statuses, other.script.error_body = [503] * 4, QUEUE_FULL
        refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == UPSTREAMS_FULL and error["type"] == "service_unavailable"
        assert "engine" not in error["message"]  # the gateway's words, not vLLM's
        assert (len(upstream.bodies), len(other.bodies)) == (1, 1)  # 4 attempts, 2 replicas
        refusals = sum(
            gw.metric(REFUSED_REQS, {"reason": reason})
            for reason in ("max_num_queued_reqs", "max_num_queued_tokens")
        )
        assert refusals == 1


async def test_a_single_upstream_that_refuses_is_not_asked_again(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()  # attempts 3
    upstream.script.statuses, upstream.script.error_body = [503] * 3, QUEUE_FULL
    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == UPSTREAMS_FULL
    assert len(upstream.bodies) == 1
    assert upstream.script.statuses == [503, 503]
    assert gw.metric(REFUSED_REQS, {"reason": "max_num_queued_reqs"}) == 1


async def test_another_503_is_retried_and_passed_on_as_before(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    other_503 = _with(QUEUE_FULL, message="scripted")
    upstream.script.statuses, upstream.script.error_body = [503] * 3, json.loads(other_503)
    answered = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert answered.status_code == 503
    assert answered.json()["error"]["message"] == "scripted"  # the upstream's own answer
    assert len(upstream.bodies) == 3  # every attempt
    assert gw.metric(REFUSED_REQS, {"reason": "max_num_queued_reqs"}) == 0
