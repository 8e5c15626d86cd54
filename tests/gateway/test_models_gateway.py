"""Several models and LoRA adapters behind one gateway, on real sockets: each request goes
to a replica that serves its ``model`` (both routers), ``/v1/models`` lists the union with
each adapter's ``parent``, an unknown name is vLLM's 404, a model whose replicas are all down
is a 503 (or held) while the others serve, and an adapter loaded at run time is routed to
once a probe has seen it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key
from tests.vllm_standin import Script, ScriptedUpstream

SYSTEM = "You are the support assistant of tenant nine. Answer in one short line. " * 4


def chat(model: str, system: str = "Be brief.") -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    return {"model": model, "messages": messages, "max_tokens": 2}


@contextlib.asynccontextmanager
async def serving(*scripts: Script) -> AsyncIterator[list[ScriptedUpstream]]:
    """Replicas that follow ``scripts``, stopped at the end."""
    replicas = [ScriptedUpstream(script) for script in scripts]
    try:
        for replica in replicas:
            await replica.start()
        yield replicas
    finally:
        for replica in replicas:
            await replica.stop()


@contextlib.asynccontextmanager
async def two_models(
    start: GatewayFactory, routing: str, **overrides: Any
) -> AsyncIterator[tuple[ServedGateway, ScriptedUpstream, ScriptedUpstream]]:
    """A gateway in front of one replica of ``chat-a`` and one of ``chat-b``."""
    scripts = Script(models=["chat-a"], name="a"), Script(models=["chat-b"], name="b")
    async with serving(*scripts) as (a, b):
        fields: dict[str, Any] = {"routing": routing, "router": {"scrape_interval": 0.1}}
        yield await start(upstreams=[a.url, b.url], **(fields | overrides)), a, b


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def post(gw: ServedGateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json=body, headers=headers or AUTH)


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
async def test_each_request_goes_to_a_replica_serving_its_model(
    start_gateway: GatewayFactory, routing: str
) -> None:
    async with two_models(start_gateway, routing) as (gw, a, b):
        for model in ["chat-a", "chat-b"] * 4:
            answer = await post(gw, chat(model))
            assert answer.status_code == 200, answer.text
            assert answer.json()["replica"] == model.removeprefix("chat-")
        long_prompt = [await post(gw, chat("chat-b", SYSTEM)) for _ in range(3)]
        assert [r.json()["replica"] for r in long_prompt] == ["b"] * 3
        assert {body["model"] for body in a.bodies} == {"chat-a"}
        assert {body["model"] for body in b.bodies} == {"chat-b"}


async def test_models_lists_the_union_with_each_adapters_parent_and_a_keys_grants(
    start_gateway: GatewayFactory,
) -> None:
    keys = {
        "all": Key("alice"),
        "base": Key("bob", models=["chat-a"]),  # the base alone: not its adapters
        "lora": Key("carol", models=["support"]),
    }
    scripts = Script(models=["chat-a"], adapters={"support": "chat-a"}), Script(models=["chat-b"])
    async with serving(*scripts) as (a, b):
        gw = await start_gateway(upstreams=[a.url, b.url], keys=keys)
        listed = (await gw.client.get("/v1/models", headers=bearer("all"))).json()
        cards = {m["id"]: m for m in listed["data"]}
        assert sorted(cards) == ["chat-a", "chat-b", "support"]
        assert cards["support"]["parent"] == "chat-a"
        assert "parent" not in cards["chat-a"]
        base = await gw.client.get("/v1/models", headers=bearer("base"))
        assert [m["id"] for m in base.json()["data"]] == ["chat-a"]
        refused = await post(gw, chat("support"), **bearer("base"))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "model_not_allowed"
        granted = await post(gw, chat("support"), **bearer("lora"))
        assert granted.status_code == 200, granted.text
        assert [body["model"] for body in a.bodies] == ["support"]
        labels = {"key": "carol", "model": "support", "status": "200"}
        assert gw.metric("vkit_gateway_requests_total", labels) == 1


async def test_a_name_no_upstream_serves_is_vllms_404(start_gateway: GatewayFactory) -> None:
    async with two_models(start_gateway, "aware") as (gw, a, b):
        answer = await post(gw, chat("chat-c"))
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["message"] == "The model `chat-c` does not exist."
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert a.bodies == [] and b.bodies == []
        labels = {"key": "alice", "model": "other", "status": "404"}
        assert gw.metric("vkit_gateway_requests_total", labels) == 1


@pytest.mark.parametrize("routing", ["round_robin", "aware"])
async def test_a_model_whose_replicas_are_down_is_a_503_while_the_other_serves(
    start_gateway: GatewayFactory, routing: str
) -> None:
    async with two_models(start_gateway, routing, health={"interval": 0.1}) as (gw, _a, b):
        pool = gw.app.running.pool
        b.script.health_status = 503
        await wait_until(lambda: not pool.any_ready_for("chat-b"))
        down = await post(gw, chat("chat-b"))
        assert down.status_code == 503, down.text
        assert "chat-b" in down.json()["error"]["message"]
        assert "retry-after" in down.headers
        assert (await post(gw, chat("chat-a"))).status_code == 200
        listed = (await gw.client.get("/v1/models", headers=AUTH)).json()
        assert sorted(m["id"] for m in listed["data"]) == ["chat-a", "chat-b"]  # still known
        assert b.bodies == []


async def test_a_request_is_held_for_its_own_models_replica(
    start_gateway: GatewayFactory,
) -> None:
    settings = {"hold": {"max_wait": 5.0, "probe_interval": 0.05}, "health": {"interval": 0.1}}
    async with two_models(start_gateway, "aware", **settings) as (gw, _a, b):
        pool = gw.app.running.pool
        b.script.health_status = 503
        await wait_until(lambda: not pool.any_ready_for("chat-b"))
        held = asyncio.create_task(post(gw, chat("chat-b")))
        await wait_until(lambda: pool.waiting == 1)
        assert (await post(gw, chat("chat-a"))).status_code == 200  # not held
        b.script.health_status = 200
        answer = await held
        assert answer.status_code == 200, answer.text
        assert answer.json()["replica"] == "b"


async def test_an_adapter_loaded_at_run_time_is_routed_to_from_the_next_probe(
    start_gateway: GatewayFactory,
) -> None:
    async with two_models(start_gateway, "aware", health={"interval": 0.1}) as (gw, _a, b):
        assert (await post(gw, chat("fresh-lora"))).status_code == 404
        b.script.adapters["fresh-lora"] = "chat-b"  # POST /v1/load_lora_adapter on b
        pool = gw.app.running.pool
        await wait_until(lambda: "fresh-lora" in pool.known_models())
        answers = [await post(gw, chat("fresh-lora")) for _ in range(3)]
        assert [r.json()["replica"] for r in answers] == ["b"] * 3
        del b.script.adapters["fresh-lora"]  # unloaded
        await wait_until(lambda: "fresh-lora" not in pool.known_models())
        assert (await post(gw, chat("fresh-lora"))).status_code == 404


# vLLM 0.32's routes that change or reveal a replica (entrypoints/serve/*/api_router.py).
ADMIN_ROUTES = [
    "POST /v1/load_lora_adapter",
    "POST /v1/unload_lora_adapter",
    "POST /reset_prefix_cache",
    "POST /reset_mm_cache",
    "POST /reset_encoder_cache",
    "POST /sleep",
    "POST /wake_up",
    "GET /is_sleeping",
    "POST /pause",
    "POST /resume",
    "GET /is_paused",
    "POST /collective_rpc",
    "POST /scale_elastic_ep",
    "POST /is_scaling_elastic_ep",
    "POST /start_profile",
    "POST /stop_profile",
    "POST /abort_requests",
    "POST /update_weights",
    "POST /start_weight_update",
    "POST /release_kv_cache_memory",
    "GET /server_info",
    "GET /load",
    "POST /adapters",
]


async def test_no_admin_route_of_vllm_is_reachable_through_the_public_port(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(health={"interval": 30})  # one probe, done before the first hit
    hits = upstream.hits
    for route in ADMIN_ROUTES:
        method, path = route.split(" ")
        body = {"lora_name": "evil", "lora_path": "/tmp/evil"} if method == "POST" else None
        answer = await gw.client.request(method, path, json=body, headers=AUTH)
        assert answer.status_code == 404, route
        assert answer.json()["error"]["type"] == "not_found_error", route
    assert upstream.hits == hits  # none went upstream


async def test_the_canary_asks_a_base_model_never_an_adapter(
    start_gateway: GatewayFactory,
) -> None:
    """``min()`` of the names would pick the adapter ``a-lora`` (it sorts before ``base``)."""
    script = Script(models=["base"], adapters={"a-lora": "base"})
    async with serving(script) as (replica,):
        canary = {"interval": 0.05, "timeout": 0.5, "canary_interval": 0.05, "canary_timeout": 0.5}
        gw = await start_gateway(upstreams=[replica.url], health=canary)
        await wait_until(lambda: gw.app.running.pool.any_ready)
        assert {body["model"] for body in replica.bodies} == {"base"}
