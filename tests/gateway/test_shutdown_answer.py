"""vLLM's 500 from a replica that is shutting down ("cannot schedule new futures after
shutdown": the request never started) goes to another replica, and the replica is out until
its next good probe; any other 500 is passed on as before (docs/vllm-server.md#shutting-down)."""

from __future__ import annotations

import json

import pytest

from gateway.upstream_call import shutting_down
from tests.gateway.conftest import AUTH, GatewayFactory
from tests.gateway.test_routing_gateway import aware, chat, post, replicas
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# What vLLM 0.32 answers to a request that reaches it after its tokenizer pool was shut down,
# word for word (Python's ThreadPoolExecutor.submit; vLLM's create_error_response).
SHUTTING_DOWN = {
    "error": {
        "message": "cannot schedule new futures after shutdown",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
OTHER_500 = {
    "error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}
}
ERRORS = "vkit_gateway_upstream_errors_total"


def _with(**error: object) -> bytes:
    return json.dumps({"error": {**SHUTTING_DOWN["error"], **error}}).encode()


def test_the_shutdown_answer_is_recognised_by_status_and_body() -> None:
    assert shutting_down(500, json.dumps(SHUTTING_DOWN).encode())


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, json.dumps(SHUTTING_DOWN).encode()),  # the body, another status
        (500, json.dumps(OTHER_500).encode()),
        (500, _with(message="cannot schedule new futures after interpreter shutdown")),
        (500, _with(type="BadRequestError")),
        (500, _with(code=400)),
        (500, b'{"error": "cannot schedule new futures after shutdown"}'),
        (500, b"cannot schedule new futures after shutdown"),
        (500, b""),
        (500, json.dumps(SHUTTING_DOWN).encode() + b" " * 600),
    ],
)
def test_any_other_answer_is_not_the_shutdown(status: int, body: bytes) -> None:
    assert not shutting_down(status, body)


async def test_a_replica_shutting_down_sends_the_request_to_the_next_one(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    async with ScriptedUpstream() as other:
        gw = await start_gateway(upstreams=[upstream.url, other.url], routing="round_robin")
        upstream.script.statuses, upstream.script.error_body = [500], SHUTTING_DOWN
        # round robin: one of the two requests goes to the stopping replica first
        for _ in range(2):
            served = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert served.status_code == 200, served.text
        assert (len(upstream.bodies), len(other.bodies)) == (1, 2)
        labels = {"upstream": upstream.address, "kind": "shutting_down"}
        assert gw.metric(ERRORS, labels) == 1


async def test_the_aware_router_takes_it_out_until_a_probe_finds_it_ready(
    start_gateway: GatewayFactory,
) -> None:
    group = await replicas(2)
    try:
        gw = await aware(start_gateway, group)  # no probe after the first
        group[0].script.statuses, group[0].script.error_body = [500], SHUTTING_DOWN
        answers = [await post(gw, chat("Be brief.", f"q{turn}")) for turn in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        # taken in turn, the stopping replica is asked once, answers 500, and is then out
        assert [len(r.bodies) for r in group] == [1, 6]
        pool = gw.app.running.pool
        leaving = next(u for u in pool.upstreams if u.label == group[0].address)
        assert not leaving.ready
        await gw.app.running.prober.probe(leaving)  # its next probe: ready again
        assert leaving.ready
    finally:
        for r in group:
            await r.stop()


async def test_another_500_is_passed_on_and_not_retried(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    async with ScriptedUpstream() as other:
        gw = await start_gateway(upstreams=[upstream.url, other.url], routing="round_robin")
        upstream.script.statuses, upstream.script.error_body = [500, 500], OTHER_500
        other.script.statuses, other.script.error_body = [500, 500], OTHER_500
        answered = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert answered.status_code == 500
        assert answered.json()["error"]["message"] == "boom"  # the upstream's own answer
        assert len(upstream.bodies) + len(other.bodies) == 1  # one attempt only
