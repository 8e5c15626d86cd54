"""The operations surface: the public port keeps /livez and a bare /readyz; metrics,
upstream details and the API docs are on the admin listener only."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/redoc", "/docs"])
async def test_the_public_port_does_not_serve_operations_routes(
    start_gateway: GatewayFactory, path: str
) -> None:
    gw = await start_gateway()
    response = await gw.client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


async def test_the_public_readyz_names_no_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    ready = await gw.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert upstream.url.removeprefix("http://") not in ready.text
    assert (await gw.client.get("/livez")).json() == {"status": "alive"}
    upstream.script.health_status = 503
    await wait_until(lambda: not gw.app.running.pool.any_ready)
    not_ready = await gw.client.get("/readyz")
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "not ready"})


async def test_the_admin_listener_serves_metrics_details_and_docs(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).is_success
    metrics = await gw.admin.get("/metrics")
    assert metrics.status_code == 200
    assert 'vkit_gateway_requests_total{key="alice",model="tiny-llama",status="200"} 1.0' in (
        metrics.text
    )
    ready = await gw.admin.get("/readyz")
    label = upstream.url.removeprefix("http://")
    assert ready.json() == {"status": "ready", "upstreams": {label: True}, "models": ["tiny-llama"]}
    schema = (await gw.admin.get("/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/models"} <= set(schema["paths"])
    assert "/metrics" not in schema["paths"]
    redoc = await gw.admin.get("/redoc")
    assert redoc.status_code == 200
    assert "/openapi.json" in redoc.text
    missing = await gw.admin.get("/v1/chat/completions")
    assert missing.status_code == 404  # the admin app proxies nothing

    upstream.script.health_status = 503
    await wait_until(lambda: not gw.app.running.pool.any_ready)
    down = await gw.admin.get("/readyz")
    assert down.status_code == 503
    assert down.json()["upstreams"] == {label: False}
