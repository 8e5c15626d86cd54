"""Readiness probing in the background, /livez, /readyz, /metrics and /v1/models."""

from __future__ import annotations

from gateway.metrics import METRIC_NAMES
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.gateway.doubles import Key, ScriptedUpstream


async def test_readyz_follows_the_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    assert (await gw.client.get("/livez")).status_code == 200
    label = {"upstream": upstream.url.removeprefix("http://")}
    await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", label) == 1)
    ready = await gw.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["upstreams"] == {label["upstream"]: True}

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
    await wait_until(lambda: gw.app.state.forwarder.pool.upstreams[0].probed)
    assert (await gw.client.get("/readyz")).status_code == 503
    upstream.script.models = ["tiny-llama", "big-model"]
    await wait_until(lambda: gw.app.state.forwarder.pool.any_ready)
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
    text = (await gw.client.get("/metrics")).text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "vllm:" not in text
    assert 'vkit_gateway_requests_total{key="alice",model="tiny-llama",status="200"} 1.0' in text
    assert "sk-test" not in text  # secrets never become labels
