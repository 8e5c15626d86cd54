"""The real key store and memory limiter inside the running gateway: 429s with their
headers, success-path headers, and reservations settled with the upstream's usage."""

from __future__ import annotations

from pathlib import Path

from gateway.key_store import KeyStore
from gateway.keyfile import ApiKey, digest_secret, save_keys
from gateway.limits import MemoryLimiter
from tests.gateway.conftest import GatewayFactory
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_requests_limit_answers_429_with_headers(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    save_keys(tmp_path / "k.yaml", [ApiKey(name="alice", sha256=digest_secret("s"), rpm=2)])
    key = KeyStore(tmp_path / "k.yaml", clock=FakeClock()).authenticate("s")
    assert key is not None
    gw = await start_gateway(keys={"s": key}, limiter=MemoryLimiter(clock=FakeClock()))
    auth = {"Authorization": "Bearer s"}
    first = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "30"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_are_settled_with_real_usage(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    key = ApiKey(name="bob", sha256="c" * 64, tpm=200)
    limiter = MemoryLimiter(clock=FakeClock())
    gw = await start_gateway(keys={"t": key}, limiter=limiter)
    auth = {"Authorization": "Bearer t"}
    for _ in range(5):  # each reserves ~50 + prompt estimate, but uses 7 + 4 tokens
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert response.status_code == 200
    assert limiter.state(key).tokens == 200 - 5 * 11
    assert limiter.state(key).in_flight == 0
    too_big = {**CHAT, "max_tokens": 500}
    refused = await gw.client.post("/v1/chat/completions", json=too_big, headers=auth)
    assert refused.status_code == 400
    assert "whole budget of 200" in refused.json()["error"]["message"]


async def test_listing_models_counts_against_the_request_limit(
    start_gateway: GatewayFactory,
) -> None:
    key = ApiKey(name="carol", sha256="d" * 64, rpm=2, tpm=1000, concurrency=1)
    limiter = MemoryLimiter(clock=FakeClock())
    gw = await start_gateway(keys={"m": key}, limiter=limiter)
    auth = {"Authorization": "Bearer m"}
    listed = await gw.client.get("/v1/models", headers=auth)
    assert listed.status_code == 200
    assert listed.headers["x-ratelimit-remaining-requests"] == "1"
    assert limiter.state(key).in_flight == 0  # the listing's slot is given back
    assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)).is_success
    refused = await gw.client.get("/v1/models", headers=auth)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert limiter.state(key).tokens == 1000 - 11  # a listing reserves no tokens
