"""No upstream ready: ``/readyz`` and requests answer 503 with ``Retry-After``, then recover.

As behind ``vkit up`` when every replica has died: the gateway's one upstream (NGINX) is
up but answers 502, and its ``/health`` is not 200, so the prober marks it not ready.
"""

from __future__ import annotations

from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_no_ready_upstream_is_503_with_retry_after_until_one_is_back(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    pool = gw.app.running.pool
    upstream.script.health_status = 502  # NGINX with no live replica
    await wait_until(lambda: not pool.any_ready)

    readyz = await gw.client.get("/readyz")
    assert readyz.status_code == 503
    assert int(readyz.headers["retry-after"]) >= 1

    upstream.script.statuses = [502] * 10  # every attempt the gateway makes
    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "upstream_unavailable"

    upstream.script.health_status = 200
    upstream.script.statuses = []
    await wait_until(lambda: pool.any_ready)
    assert (await gw.client.get("/readyz")).status_code == 200
    served = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert served.status_code == 200
    assert "retry-after" not in served.headers


async def test_an_unreachable_upstream_is_503_with_retry_after(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(upstreams=["http://127.0.0.1:9"])
    refused = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
