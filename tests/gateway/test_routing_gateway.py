"""The aware router inside the gateway, on real sockets: replicas that export vLLM's gauges,
affinity, spreading, a replica that dies, overload, and exact in-flight counts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from aiohttp import web

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until

SYSTEM = "You are the billing assistant of tenant seven. Answer in one line. " * 10


class GaugedReplica:
    """A vLLM stand-in with ``/metrics``: its gauges are what the test sets."""

    def __init__(self) -> None:
        self.running = 0.0
        self.waiting = 0.0
        self.served = 0
        self.stream_delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> GaugedReplica:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def label(self) -> str:
        return self.url.removeprefix("http://")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny-llama"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        labels = '{engine="0",model_name="tiny-llama"}'
        text = (
            f"vllm:num_requests_running{labels} {self.running}\n"
            f"vllm:num_requests_waiting{labels} {self.waiting}\n"
            f"vllm:kv_cache_usage_perc{labels} 0.1\n"
        )
        return web.Response(text=text)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.served += 1
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"content": "ok"}}], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(3):
            await asyncio.sleep(self.stream_delay)
            chunk = {"choices": [{"delta": {"content": "x"}}], "usage": usage}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


async def replicas(count: int) -> list[GaugedReplica]:
    return [await GaugedReplica().start() for _ in range(count)]


def chat(system: str, user: str = "hi", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return {"model": "tiny-llama", "messages": messages, "max_tokens": 2, **extra}


async def aware(
    start: GatewayFactory, group: list[GaugedReplica], **overrides: Any
) -> ServedGateway:
    fields: dict[str, Any] = {
        "routing": "aware",
        "router": {"scrape_interval": 0.1},
        "health": {"interval": 30, "timeout": 1.0},  # only the first probe: no help from it
    }
    gw = await start(upstreams=[r.url for r in group], **(fields | overrides))
    scrapes = gw.app.running.scrapes
    await wait_until(lambda: all(r.label in scrapes for r in group))
    return gw


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
        assert sorted(r.served for r in group) == [0, 6]
        for r in group:
            r.served = 0
        for _ in range(6):
            assert (await post(gw, chat("Be brief."))).status_code == 200
        assert [r.served for r in group] == [3, 3]
        assert gw.metric("vkit_gateway_routing_decisions_total", {"reason": "affinity"}) == 6
        assert gw.metric("vkit_gateway_routing_decisions_total", {"reason": "least_loaded"}) == 6
        text = (await gw.admin.get("/metrics")).text
        assert f'vkit_gateway_replica_score{{upstream="{group[0].label}"}}' in text
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
        assert group[1].served == 8
        pool = gw.app.running.pool
        dead = next(u for u in pool.upstreams if u.label == group[0].label)
        assert not dead.ready  # by the refused connection (or scrape), not by a probe
        labels = {"upstream": group[0].label, "kind": "connect"}
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
            r.waiting = 40
        gw = await aware(start_gateway, group, router={"scrape_interval": 0.1, "max_waiting": 32})
        refused = await post(gw, chat(SYSTEM))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "replicas_overloaded"
        assert refused.headers["retry-after"] == "1"
        assert gw.metric("vkit_gateway_routing_overloaded_total") == 1
        group[1].waiting = 0
        scrapes = gw.app.running.scrapes
        await wait_until(lambda: scrapes[group[1].label].waiting == 0)  # a scrape has seen it
        assert (await post(gw, chat(SYSTEM))).status_code == 200
        assert group[1].served == 1
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
        group[0].stream_delay = 0.3
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
