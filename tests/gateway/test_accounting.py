"""Request accounting: every answer counted once, by key name, model and status, in one place."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.errors import RateLimitExceeded, UpstreamUnavailable
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key, RecordingLimiter
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
KEYS = {
    SECRET: Key("alice"),
    "sk-bob": Key("bob", models=["big-model"]),
    "sk-limited": Key("limited"),
    "sk-deny": Key("deny"),
    "sk-broken": Key("broken"),
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class ScriptedLimiter(RecordingLimiter):
    """Refuses key ``limited`` (429), stands for a Redis outage in deny mode for key ``deny``
    (503) and fails unexpectedly for key ``broken`` (500)."""

    async def acquire(self, key: Key, tokens: int) -> Any:
        if key.name == "limited":
            raise RateLimitExceeded("slow down", reason="requests", retry_after=1.0)
        if key.name == "deny":
            raise UpstreamUnavailable("the rate limiter's store is unreachable")
        if key.name == "broken":
            raise RuntimeError("a bug in the limiter")
        return await super().acquire(key, tokens)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                labels = sample.labels
                found[(labels["key"], labels["model"], labels.get("status", ""))] = sample.value
    return found


def total(gw: ServedGateway) -> float:
    return sum(samples(gw.registry, "vkit_gateway_requests_total").values())


async def test_every_answer_is_counted_once_with_its_key_model_and_status(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(
        keys=KEYS,
        limiter=ScriptedLimiter(),
        max_body_bytes=2048,
        timeouts={"first_byte": 0.3},
    )
    client = gw.client
    post = "/v1/chat/completions"
    assert (await client.post(post, json=CHAT, headers=AUTH)).status_code == 200
    assert (await client.get("/v1/models", headers=AUTH)).status_code == 200
    bad_json = await client.post(post, content=b"{not json", headers=AUTH)
    assert bad_json.status_code == 400
    assert (await client.post(post, json=CHAT)).status_code == 401
    assert (await client.post(post, json=CHAT, headers=bearer("sk-bob"))).status_code == 403
    unknown = {**CHAT, "model": "no-such-model"}
    assert (await client.post(post, json=unknown, headers=AUTH)).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert (await client.post(post, json=big, headers=AUTH)).status_code == 413
    assert (await client.post(post, json=CHAT, headers=bearer("sk-limited"))).status_code == 429
    assert (await client.post(post, json=CHAT, headers=bearer("sk-deny"))).status_code == 503
    assert (await client.post(post, json=CHAT, headers=bearer("sk-broken"))).status_code == 500
    upstream.script.statuses = [401]  # the upstream refused the gateway's own key: 502
    assert (await client.post(post, json=CHAT, headers=AUTH)).status_code == 502
    upstream.script.head_delay = 5
    assert (await client.post(post, json=CHAT, headers=AUTH)).status_code == 504
    upstream.script.head_delay = 0
    upstream.script.chunks, upstream.script.chunk_delay = 100, 0.05
    async with client.stream("POST", post, json=STREAM, headers=AUTH) as response:
        await anext(response.aiter_bytes())  # then hang up mid-stream
    # the probes are the monitor's own traffic, not answers to API clients
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200

    expected = {
        ("alice", "tiny-llama", "200"): 1.0,
        ("alice", "none", "200"): 1.0,  # GET /v1/models names no model
        ("alice", "none", "400"): 1.0,  # the body was never parsed
        ("unauthenticated", "none", "401"): 1.0,
        ("bob", "tiny-llama", "403"): 1.0,
        ("alice", "other", "404"): 1.0,  # not a served model: a bounded label
        ("unauthenticated", "none", "404"): 1.0,  # an unknown path
        ("alice", "none", "413"): 1.0,
        ("limited", "tiny-llama", "429"): 1.0,
        ("deny", "tiny-llama", "503"): 1.0,
        ("broken", "tiny-llama", "500"): 1.0,
        ("alice", "tiny-llama", "502"): 1.0,
        ("alice", "tiny-llama", "504"): 1.0,
        ("alice", "tiny-llama", "499"): 1.0,
    }
    with contextlib.suppress(TimeoutError):  # then the comparison shows what is missing
        await wait_until(lambda: total(gw) >= len(expected))
    assert samples(gw.registry, "vkit_gateway_requests_total") == expected
    durations = samples(gw.registry, "vkit_gateway_request_duration_seconds_count")
    by_key_model: dict[tuple[str, ...], float] = {}
    for key, model, _ in expected:
        by_key_model[(key, model, "")] = by_key_model.get((key, model, ""), 0) + 1
    assert durations == by_key_model
    assert gw.metric("vkit_gateway_rate_limited_total", {"key": "limited", "reason": "requests"})


async def test_anonymous_answers_are_counted_as_anonymous(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(allow_anonymous=True)
    assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    labels = {"key": "anonymous", "model": "tiny-llama", "status": "200"}
    await wait_until(lambda: gw.metric("vkit_gateway_requests_total", labels) == 1)
    assert total(gw) == 1
