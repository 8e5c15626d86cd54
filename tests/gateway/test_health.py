"""Readiness probing in the background, /livez, /readyz, /metrics (admin) and /v1/models."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.client import AiohttpClient
from gateway.metrics import METRIC_NAMES
from gateway.settings import GatewaySettings
from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import DictKeyStore, Key, RecordingLimiter
from tests.vllm_standin import (
    DROP,
    RESET,
    SILENT,
    RawAnswer,
    RawUpstream,
    ScriptedUpstream,
    http_answer,
)


async def test_readyz_follows_the_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    assert (await gw.client.get("/livez")).status_code == 200
    label = {"upstream": upstream.url.removeprefix("http://")}
    await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", label) == 1)
    ready = await gw.admin.get("/readyz")  # the upstreams' states: admin listener only
    assert ready.status_code == 200
    assert ready.json()["upstreams"] == {label["upstream"]: True}
    assert (await gw.client.get("/readyz")).status_code == 200

    upstream.script.health_status = 503
    await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", label) == 0)
    assert (await gw.client.get("/readyz")).status_code == 503
    assert (await gw.client.get("/livez")).status_code == 200

    upstream.script.health_status = 200
    await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", label) == 1)


async def test_an_upstream_without_the_expected_model_is_not_ready(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(health={"interval": 0.1, "expected_models": ["big-model"]})
    await wait_until(lambda: gw.app.running.pool.upstreams[0].probed)
    assert (await gw.client.get("/readyz")).status_code == 503
    upstream.script.models = ["tiny-llama", "big-model"]
    await wait_until(lambda: gw.app.running.pool.any_ready)
    assert (await gw.client.get("/readyz")).status_code == 200


async def test_models_lists_only_the_keys_models(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    upstream.script.models = ["tiny-llama", "other", "third"]
    keys = {"k": Key("bob", models=["other"]), "a": Key("alice")}
    gw = await start_gateway(keys=keys)
    limited = await gw.client.get("/v1/models", headers={"Authorization": "Bearer k"})
    assert [m["id"] for m in limited.json()["data"]] == ["other"]
    full = await gw.client.get("/v1/models", headers={"Authorization": "Bearer a"})
    assert len(full.json()["data"]) == 3


async def test_metrics_exports_the_documented_names(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    await gw.client.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": "x"}, headers=AUTH
    )
    text = (await gw.admin.get("/metrics")).text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "vllm:" not in text
    assert 'vkit_gateway_requests_total{key="alice",model="tiny-llama",status="200"} 1.0' in text
    assert "sk-test" not in text  # secrets never become labels


BAD_ANSWERS: dict[str, RawAnswer] = {
    # What a replica dying mid-answer looks like behind NGINX's proxy_buffering off.
    "truncated body": http_answer(200, b"abc", **{"Content-Length": "100"}),
    "not http": b"hello there\r\n\r\n",
    "bad content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    "closed": DROP,
    "reset": RESET,
    "silence": SILENT,
}


def up(gw: ServedGateway, url: str) -> float:
    return gw.metric("vkit_gateway_upstream_up", {"upstream": url.removeprefix("http://")})


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_the_prober_survives_every_bad_answer(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, path: str, answer: RawAnswer
) -> None:
    """Each upstream is judged on its own; no answer stops the probing of any."""
    async with RawUpstream() as raw:
        healthy = raw.answers[path]
        gw = await start_gateway(
            upstreams=[raw.url, upstream.url], health={"interval": 0.05, "timeout": 0.3}
        )
        await wait_until(lambda: up(gw, raw.url) == 1 and up(gw, upstream.url) == 1)
        raw.answers[path] = answer
        await wait_until(lambda: up(gw, raw.url) == 0)
        ready = await gw.admin.get("/readyz")
        assert ready.status_code == 200
        assert list(ready.json()["upstreams"].values()) == [False, True]
        # Still probing: the other upstream going down, then this one coming back, are seen.
        upstream.script.health_status = 503
        await wait_until(lambda: up(gw, upstream.url) == 0)
        assert (await gw.client.get("/readyz")).status_code == 503
        raw.answers[path] = healthy
        await wait_until(lambda: up(gw, raw.url) == 1)


async def test_the_prober_logs_once_per_state_change(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with RawUpstream() as raw:
        caplog.set_level(logging.INFO, logger="vkit.gateway.health")
        gw = await start_gateway(upstreams=[raw.url], health={"interval": 0.02, "timeout": 0.3})
        raw.answers["/health"] = BAD_ANSWERS["truncated body"]
        await wait_until(lambda: up(gw, raw.url) == 0)
        probes = len(raw.requests_to("/health"))
        await wait_until(lambda: len(raw.requests_to("/health")) >= probes + 5)
        lines = [r.getMessage() for r in caplog.records if r.name == "vkit.gateway.health"]
        assert len(lines) == 2, lines  # "is ready", then "is not ready"
        assert "not ready" in lines[1]


class RecordingClient(AiohttpClient):
    def __init__(self) -> None:
        super().__init__(connect_timeout=1.0)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


async def test_shutdown_closes_everything_even_when_a_closer_fails() -> None:
    """The issue's sequence: a truncated probe answer, then shutdown."""
    closed: list[str] = []

    async def failing_close() -> None:
        closed.append("failing")
        raise ConnectionError("redis is gone already")

    async def redis_close() -> None:
        closed.append("redis")

    async with RawUpstream() as raw:
        raw.answers["/health"] = BAD_ANSWERS["truncated body"]
        settings = GatewaySettings(upstreams=[raw.url], health={"interval": 0.02})  # type: ignore[arg-type]
        clients = RecordingClient(), RecordingClient()
        app = create_app(
            settings,
            key_store=DictKeyStore({}),
            limiter=RecordingLimiter(),
            registry=CollectorRegistry(),
            upstream_client=clients[0],
            probe_client=clients[1],
            on_shutdown=[failing_close, redis_close],
        )
        async with app.router.lifespan_context(app):
            await wait_until(lambda: len(raw.requests_to("/health")) >= 3)
            assert app.running.pool.upstreams[0].probed
    assert all(client.closed for client in clients)
    assert closed == ["failing", "redis"]


def canary_settings() -> dict[str, object]:
    return {"interval": 0.05, "timeout": 0.5, "canary_interval": 0.05, "canary_timeout": 0.5}


async def test_a_canary_generation_gates_readiness(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    """/health and /v1/models stay fine after a GPU fault (vLLM issue 36960); a one-token
    generation does not, and takes the upstream out."""
    gw = await start_gateway(health=canary_settings())
    await wait_until(lambda: up(gw, upstream.url) == 1)
    label = {"upstream": upstream.url.removeprefix("http://")}
    assert gw.metric("vkit_gateway_canary_seconds_count", label) >= 1
    assert upstream.bodies[0] == {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 1}

    upstream.script.statuses = [500] * 10_000  # every generation fails; /health stays 200
    await wait_until(lambda: up(gw, upstream.url) == 0)
    assert (await gw.client.get("/readyz")).status_code == 503
    assert gw.metric("vkit_gateway_canary_failures_total", label) >= 1

    upstream.script.statuses.clear()
    await wait_until(lambda: up(gw, upstream.url) == 1)
    # Canary tokens are billed to no key and counted in no request metric.
    assert gw.limiter.leases == []
    text = (await gw.admin.get("/metrics")).text
    assert "vkit_gateway_tokens_total{" not in text
    assert "vkit_gateway_requests_total{" not in text


CANARY_FAILURES: dict[str, RawAnswer] = {
    "500": http_answer(500, b'{"error": {"message": "EngineCore died"}}'),
    "not a completion": http_answer(200, b'{"object": "error"}'),
    "truncated": BAD_ANSWERS["truncated body"],
    "not http": BAD_ANSWERS["not http"],
    "silence": SILENT,
    "reset": RESET,
}


@pytest.mark.parametrize("answer", CANARY_FAILURES.values(), ids=CANARY_FAILURES.keys())
async def test_a_failing_canary_takes_the_upstream_out(
    start_gateway: GatewayFactory, answer: RawAnswer
) -> None:
    async with RawUpstream() as raw:
        gw = await start_gateway(
            upstreams=[raw.url], upstream_api_key="sk-upstream", health=canary_settings()
        )
        await wait_until(lambda: up(gw, raw.url) == 1)
        canary = raw.requests_to("/v1/completions")[0]
        assert canary.headers["authorization"] == "Bearer sk-upstream"
        assert json.loads(canary.body)["max_tokens"] == 1
        healthy = raw.answers["/v1/completions"]
        raw.answers["/v1/completions"] = answer
        await wait_until(lambda: up(gw, raw.url) == 0)
        label = {"upstream": raw.url.removeprefix("http://")}
        assert gw.metric("vkit_gateway_canary_failures_total", label) >= 1
        raw.answers["/v1/completions"] = healthy
        await wait_until(lambda: up(gw, raw.url) == 1)


async def test_no_canary_by_default(start_gateway: GatewayFactory) -> None:
    async with RawUpstream() as raw:
        gw = await start_gateway(upstreams=[raw.url], health={"interval": 0.02})
        await wait_until(lambda: len(raw.requests_to("/health")) >= 5)
        assert up(gw, raw.url) == 1
        assert raw.requests_to("/v1/completions") == []
