"""Work before the limit says no: a key the limiter refuses whatever its body is answered
before its body is parsed or counted, and no one body makes the event loop work long
(its JSON values are bounded before it is parsed), so other keys' requests are not held up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from gateway.deadline import Deadline
from gateway.keyfile import ApiKey
from gateway.limits import MemoryLimiter
from tests.gateway.conftest import GatewayFactory

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
FOUR_MIB = 4 * 1024 * 1024


def key(name: str, **limits: int) -> ApiKey:
    return ApiKey(name=name, sha256=hashlib.sha256(name.encode()).hexdigest(), **limits)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


def empty_lists_body(size: int = FOUR_MIB) -> bytes:
    """A chat body whose ``tools`` is as many empty lists as fit in ``size`` bytes."""
    head = b'{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}],"tools":['
    count = (size - len(head) - 2) // 3
    return head + b",".join([b"[]"] * count) + b"]}"


class RecordingCounter:
    """A prompt counter that records every body it is asked to count."""

    def __init__(self) -> None:
        self.counted = 0

    def count(self, data: Mapping[str, Any], deadline: Deadline | None = None) -> int:
        self.counted += 1
        return 10


async def test_a_key_over_its_requests_limit_gets_its_429_before_its_body_is_parsed(
    start_gateway: GatewayFactory,
) -> None:
    counter = RecordingCounter()
    limiter = MemoryLimiter(clock=lambda: 1000.0)  # frozen: nothing refills
    gw = await start_gateway(
        keys={"spent": key("spent", rpm=1)}, limiter=limiter, prompt_counter=counter
    )
    ok = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth("spent"))
    assert ok.status_code == 200
    assert counter.counted == 1
    # not JSON at all: parsed, it would be a 400; refused first, it is the 429
    refused = await gw.client.post(
        "/v1/chat/completions", content=b"{not json", headers=auth("spent")
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    hostile = await gw.client.post(
        "/v1/chat/completions", content=empty_lists_body(), headers=auth("spent")
    )
    assert hostile.status_code == 429
    assert counter.counted == 1  # neither refused body was counted
    reason = {"key": "spent", "reason": "requests"}
    assert gw.metric("vkit_gateway_rate_limited_total", reason) == 2


async def test_a_key_at_its_concurrency_is_refused_before_its_body_is_parsed(
    start_gateway: GatewayFactory,
) -> None:
    limiter = MemoryLimiter(clock=lambda: 1000.0)
    gw = await start_gateway(keys={"busy": key("busy", concurrency=1)}, limiter=limiter)
    held = await limiter.acquire(key("busy", concurrency=1), 1)  # its one slot, taken
    refused = await gw.client.post("/v1/chat/completions", content=b"[1, 2", headers=auth("busy"))
    assert refused.status_code == 429
    assert "in flight" in refused.json()["error"]["message"]
    await held.settle(0)
    after = await gw.client.post("/v1/chat/completions", content=b"[1, 2", headers=auth("busy"))
    assert after.status_code == 400  # with its slot free, the body is read, and refused


async def test_a_body_of_a_million_values_is_refused_before_it_is_parsed(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(keys={"k": key("k")}, limiter=MemoryLimiter(clock=time.monotonic))
    refused = await gw.client.post(
        "/v1/chat/completions", content=empty_lists_body(), headers=auth("k")
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "too_many_values"
    assert "262144 JSON values" in error["message"]


async def test_other_keys_are_not_held_up_while_hostile_bodies_are_handled(
    start_gateway: GatewayFactory,
) -> None:
    """One key sends 4 MiB bodies of empty lists, one within its limits and one over
    them; another key's small requests meanwhile wait no more than a bound."""
    limiter = MemoryLimiter(clock=lambda: 1000.0)
    keys = {"hostile": key("hostile", rpm=2), "calm": key("calm")}
    gw = await start_gateway(keys=keys, limiter=limiter)
    hostile = empty_lists_body()
    latencies: list[float] = []
    stop = threading.Event()

    def calm() -> None:
        """Its own thread and client: a request sent while the gateway's loop is held
        waits for it, whenever it was sent."""
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            while not stop.is_set():
                began = time.perf_counter()
                response = client.post("/v1/chat/completions", json=CHAT, headers=auth("calm"))
                assert response.status_code == 200
                latencies.append(time.perf_counter() - began)
                time.sleep(0.01)

    async def attack() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            statuses = []
            # within its rpm: refused for its size; then it spends its rpm; then over it
            for body in (hostile, CHAT, CHAT, hostile, hostile, hostile):
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                response = await client.post(
                    "/v1/chat/completions", content=content, headers=auth("hostile")
                )
                statuses.append(response.status_code)
            return statuses

    calm_task = asyncio.create_task(asyncio.to_thread(calm))
    await asyncio.sleep(0.2)
    statuses = await attack()
    stop.set()
    await calm_task
    assert latencies
    # one parse of such a body held the loop 2.4-5.5 s; now no request waits long
    assert max(latencies) < 1.0, f"the calm key waited {max(latencies):.2f} s"
    assert statuses == [400, 200, 200, 429, 429, 429]
