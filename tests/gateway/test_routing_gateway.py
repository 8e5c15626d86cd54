"""The aware router inside the gateway, on real sockets: replicas that export vLLM's gauges,
affinity, spreading, a replica that dies, overload, and exact in-flight counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from gateway.routing.affinity import prefix_key
from gateway.routing.router import AwareRouter
from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key
from tests.vllm_standin import ScriptedUpstream

SYSTEM = "You are the billing assistant of tenant seven. Answer in one line. " * 10


async def replicas(count: int) -> list[ScriptedUpstream]:
    """Replicas whose ``/metrics`` gauges are what the test sets in their scripts."""
    return [await ScriptedUpstream().start() for _ in range(count)]


def chat(system: str, user: str = "hi", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return {"model": "tiny-llama", "messages": messages, "max_tokens": 2, **extra}


async def aware(
    start: GatewayFactory, group: list[ScriptedUpstream], **overrides: Any
) -> ServedGateway:
    fields: dict[str, Any] = {
        "routing": "aware",
        "router": {"scrape_interval": 0.1},
        "health": {"interval": 30, "timeout": 1.0},  # only the first probe: no help from it
    }
    gw = await start(upstreams=[r.url for r in group], **(fields | overrides))
    scrapes = gw.app.running.scrapes
    await wait_until(lambda: all(r.address in scrapes for r in group))
    return gw


CHAT = "/v1/chat/completions"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def post(gw: ServedGateway, body: dict[str, Any]) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)


async def test_a_shared_prefix_stays_on_one_replica_and_short_prompts_spread(
    start_gateway: GatewayFactory,
) -> None:
    group = await replicas(2)
    try:
        gw = await aware(start_gateway, group)
        for turn in range(6):
            assert (await post(gw, chat(SYSTEM, f"question {turn}"))).status_code == 200
        assert sorted(len(r.bodies) for r in group) == [0, 6]
        for r in group:
            r.bodies.clear()
        for _ in range(6):
            assert (await post(gw, chat("Be brief."))).status_code == 200
        assert [len(r.bodies) for r in group] == [3, 3]
        assert gw.metric("vkit_gateway_routing_decisions_total", {"reason": "affinity"}) == 6
        assert gw.metric("vkit_gateway_routing_decisions_total", {"reason": "least_loaded"}) == 6
        text = (await gw.admin.get("/metrics")).text
        assert f'vkit_gateway_replica_score{{upstream="{group[0].address}"}}' in text
    finally:
        for r in group:
            await r.stop()


async def test_a_replica_that_dies_is_out_at_once_and_no_request_fails(
    start_gateway: GatewayFactory,
) -> None:
    group = await replicas(2)
    try:
        gw = await aware(start_gateway, group)
        await group[0].stop()
        answers = [await post(gw, chat("Be brief.")) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 8
        assert len(group[1].bodies) == 8
        pool = gw.app.running.pool
        dead = next(u for u in pool.upstreams if u.label == group[0].address)
        assert not dead.ready  # by the refused connection (or scrape), not by a probe
        labels = {"upstream": group[0].address, "kind": "connect"}
        assert gw.metric("vkit_gateway_upstream_errors_total", labels) <= 1
    finally:
        for r in group:
            await r.stop()


async def test_every_queue_over_the_bound_is_refused_with_retry_after(
    start_gateway: GatewayFactory,
) -> None:
    group = await replicas(2)
    try:
        for r in group:
            r.script.waiting = 40
        gw = await aware(start_gateway, group, router={"scrape_interval": 0.1, "max_waiting": 32})
        refused = await post(gw, chat(SYSTEM))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "replicas_overloaded"
        assert refused.headers["retry-after"] == "1"
        assert gw.metric("vkit_gateway_routing_overloaded_total") == 1
        group[1].script.waiting = 0
        scrapes = gw.app.running.scrapes
        await wait_until(lambda: scrapes[group[1].address].waiting == 0)  # a scrape has seen it
        assert (await post(gw, chat(SYSTEM))).status_code == 200
        assert len(group[1].bodies) == 1
    finally:
        for r in group:
            await r.stop()


async def test_in_flight_counts_go_back_to_zero_whatever_the_ending(
    start_gateway: GatewayFactory,
) -> None:
    group = await replicas(1)
    try:
        gw = await aware(start_gateway, group)
        upstream = gw.app.running.pool.upstreams[0]
        group[0].script.chunk_delay = 0.3
        streaming = asyncio.create_task(post(gw, chat(SYSTEM, stream=True)))
        await wait_until(lambda: upstream.in_flight == 1)
        assert (await streaming).status_code == 200
        assert upstream.in_flight == 0
        # A client that goes away mid-stream: the count is given back with the connection.
        async with httpx.AsyncClient(base_url=gw.url) as client:
            gone = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat(SYSTEM, stream=True), headers=AUTH)
            )
            await wait_until(lambda: upstream.in_flight == 1)
            gone.cancel()
        await wait_until(lambda: upstream.in_flight == 0)
        assert (await post(gw, chat(SYSTEM))).status_code == 200
        assert upstream.in_flight == 0
    finally:
        for r in group:
            await r.stop()


async def test_a_replica_that_discovery_removes_leaves_no_series_behind(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """``upstream_up`` and the other per-replica series of a replica gone from the
    discovery answer go with it: ready replicas are not overstated, and the label set
    does not grow with each pod that ever came and went."""
    group = await replicas(2)
    listing = tmp_path / "replicas.txt"
    listing.write_text("".join(f"{r.url}\n" for r in group))
    gone, kept = group[0].address, group[1].address
    try:
        gw = await aware(start_gateway, group, discovery={"file": str(listing), "interval": 0.05})
        await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", {"upstream": gone}) == 1)
        await group[0].stop()  # a scrape fails, a request's connection is refused
        assert (await post(gw, chat("Be brief."))).status_code == 200
        await wait_until(
            lambda: gw.metric("vkit_gateway_replica_scrape_failures_total", {"upstream": gone}) > 0
        )
        listing.write_text(f"{group[1].url}\n")
        pool = gw.app.running.pool
        await wait_until(lambda: [u.label for u in pool.upstreams] == [kept])
        await asyncio.sleep(0.3)  # probes, scrapes and the next look-ups run meanwhile
        # the kept replica's own probe may still be on its way on a loaded machine
        await wait_until(lambda: gw.metric("vkit_gateway_upstream_up", {"upstream": kept}) == 1)
        text = (await gw.admin.get("/metrics")).text
        assert f'upstream="{gone}"' not in text
        assert f'vkit_gateway_upstream_up{{upstream="{kept}"}} 1.0' in text
        assert f'vkit_gateway_replica_score{{upstream="{kept}"}}' in text
    finally:
        for r in group:
            await r.stop()


async def test_one_key_sending_one_off_prefixes_keeps_the_other_tenants_entries(
    start_gateway: GatewayFactory,
) -> None:
    """The key table holds 8 prefix keys; a key that sends 40 one-off prefixes may evict
    its own entries, not the two that two other tenants placed first."""
    group = await replicas(2)
    keys = {"s-a": Key("tenant-a"), "s-b": Key("tenant-b"), "s-spam": Key("spammer")}
    try:
        gw = await aware(start_gateway, group, keys=keys, router={"key_table_size": 8})
        router = gw.app.running.router
        assert isinstance(router, AwareRouter) and router.keys is not None
        settings = gw.app.running.settings.router
        tenants = {"s-a": chat(SYSTEM + "tenant a"), "s-b": chat(SYSTEM + "tenant b")}
        placed = {}
        for secret, body in tenants.items():
            answer = await gw.client.post(CHAT, json=body, headers=bearer(secret))
            assert answer.status_code == 200
            placed[secret] = prefix_key(
                body,
                CHAT,
                prefix_chars=settings.prefix_chars,
                min_prefix_chars=settings.min_prefix_chars,
            )
        for i in range(40):
            one_off = chat(f"{i} " + SYSTEM)
            answer = await gw.client.post(CHAT, json=one_off, headers=bearer("s-spam"))
            assert answer.status_code == 200
        assert len(router.keys) == 8
        for secret, key in placed.items():
            assert key in router.keys, f"{keys[secret].name}'s entry was evicted"
    finally:
        for r in group:
            await r.stop()
