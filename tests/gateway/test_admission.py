"""The gateway wired to the real key store and limiter: reservations under concurrency,
concurrency slots freed on every path, success-path rate-limit headers, and the app that
``vkit gateway`` assembles from its settings."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import httpx
import pytest

from gateway.app import create_admin_app
from gateway.assembly import build_app
from gateway.body import estimate_prompt_tokens
from gateway.keyfile import ApiKey, save_keys
from gateway.limits import MemoryLimiter
from gateway.settings import GatewaySettings
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, wait_until
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
FROZEN_CLOCK = 1000.0  # no refill during a test: every token is accounted for


def api_key(**limits: int) -> ApiKey:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    return ApiKey(name="alice", sha256=digest, **limits)


async def test_concurrent_reservations_never_overshoot_the_tpm(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    reserve = estimate_prompt_tokens(CHAT) + 100
    key = api_key(tpm=2 * reserve + 1)
    upstream.script.head_delay = 0.2  # all six are in flight together
    gw = await start_gateway(keys={SECRET: key}, limiter=MemoryLimiter(clock=lambda: FROZEN_CLOCK))
    body = {**CHAT, "max_tokens": 100}
    responses = await asyncio.gather(
        *(gw.client.post("/v1/chat/completions", json=body, headers=AUTH) for _ in range(6))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert "x-ratelimit-remaining-tokens" in refused.headers
    assert gw.metric("vkit_gateway_rate_limited_total", {"key": "alice", "reason": "tokens"}) == 4
    answered_429 = sum(
        sample.value
        for family in gw.registry.collect()
        if family.name == "vkit_gateway_requests"
        for sample in family.samples
        if sample.name == "vkit_gateway_requests_total" and sample.labels["status"] == "429"
    )
    assert answered_429 == 4  # refusals count as answered requests too (error-ratio alerts)
    # settled with real usage (7 + 4 tokens each): the unused reservations came back
    again = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert again.status_code == 200
    assert "x-ratelimit-remaining-tokens" in again.headers


async def test_a_disconnected_stream_frees_its_concurrency_slot(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.chunks = 100
    upstream.script.chunk_delay = 0.05
    gw = await start_gateway(
        keys={SECRET: api_key(concurrency=1)}, limiter=MemoryLimiter(clock=lambda: FROZEN_CLOCK)
    )
    stream = {**CHAT, "stream": True}
    async with gw.client.stream("POST", "/v1/chat/completions", json=stream, headers=AUTH) as r:
        await anext(r.aiter_bytes())
        second = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert second.status_code == 429
        reason = {"key": "alice", "reason": "concurrency"}
        assert gw.metric("vkit_gateway_rate_limited_total", reason) == 1
    await wait_until(lambda: upstream.closed_early == 1)
    await wait_until(lambda: gw.metric("vkit_gateway_in_flight_requests") == 0)
    third = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert third.status_code == 200


async def test_build_app_serves_keys_from_the_keys_file(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    save_keys(keys_file, [api_key(rpm=1)])
    settings = GatewaySettings(upstreams=[upstream.url], keys_file=keys_file)  # type: ignore[list-item]
    app = build_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
    ):
        ok = await client.post("/v1/completions", json={"model": "m", "prompt": "x"}, headers=AUTH)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "1"
        limited = await client.post(
            "/v1/completions", json={"model": "m", "prompt": "x"}, headers=AUTH
        )
        assert limited.status_code == 429
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer vk-nope"})
        assert wrong.status_code == 401
        admin = httpx.ASGITransport(app=create_admin_app(app))
        async with httpx.AsyncClient(transport=admin, base_url="http://admin") as admin_client:
            metrics = (await admin_client.get("/metrics")).text
        assert "vkit_gateway_process_resident_memory_bytes" in metrics
        assert "vkit_gateway_limiter_backend_errors_total 0.0" in metrics


async def test_the_assembled_gateway_reloads_keys_and_bounds_keys_without_concurrency(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    save_keys(keys_file, [api_key()])  # no concurrency of its own
    settings = GatewaySettings(
        upstreams=[upstream.url],  # type: ignore[list-item]
        keys_file=keys_file,
        default_key_concurrency=1,
    )
    app = build_app(settings)
    transport = httpx.ASGITransport(app=app)
    body = {"model": "tiny-llama", "prompt": "x"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
    ):
        upstream.script.head_delay = 0.3  # both requests are in flight together
        both = await asyncio.gather(
            *(client.post("/v1/completions", json=body, headers=AUTH) for _ in range(2))
        )
        assert sorted(r.status_code for r in both) == [200, 429]
        upstream.script.head_delay = 0.0
        bob = ApiKey(name="bob", sha256=hashlib.sha256(b"s-bob").hexdigest())
        save_keys(keys_file, [api_key(), bob])
        async with asyncio.timeout(10):  # the lifespan's reload task picks it up
            while True:
                answer = await client.post(
                    "/v1/completions", json=body, headers={"Authorization": "Bearer s-bob"}
                )
                if answer.status_code != 401:
                    break
                await asyncio.sleep(0.05)  # a 401 never suspends: let the reload task run
        assert answer.status_code == 200
        admin = httpx.ASGITransport(app=create_admin_app(app))
        async with httpx.AsyncClient(transport=admin, base_url="http://admin") as admin_client:
            metrics = (await admin_client.get("/metrics")).text
        assert "vkit_gateway_keys_loaded 2.0" in metrics


async def test_a_client_gone_while_uploading_is_a_quiet_499(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway()
    host, port = gw.url.removeprefix("http://").split(":")
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Length: 1000\r\n\r\n"
    )
    with caplog.at_level(logging.WARNING):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(head.encode() + b'{"model": "tiny-llama", "messages": [')  # then hangs up
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        gone = {"key": "alice", "model": "none", "status": "499"}
        await wait_until(lambda: gw.metric("vkit_gateway_requests_total", gone) == 1)
        ok = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert ok.status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
