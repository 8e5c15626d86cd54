"""Requests leave no reference cycles in the gateway's stack.

``vkit gateway`` collects the youngest generation only every 10,000 net allocations
(``vkit.commands.gateway.tune_gc``): that holds no garbage only while the request path builds
no cycles, which only the cycle collector could free. Checked for each kind of answer, the
errors and a client hanging up included, with the collector off and every cycle kept.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import RecordingLimiter
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
# The gateway's own packages and what it runs on; the test's own client (httpx, httpcore,
# anyio) builds cycles of its own and is not under test.
SERVING = ("gateway", "starlette", "fastapi", "uvicorn", "aiohttp", "prometheus_client")
SERVING += ("multidict", "yarl", "pydantic")
GATEWAY_ROOT = str(Path(sys.modules["gateway"].__file__ or "").parent)


def serving_garbage(garbage: list[object]) -> Counter[str]:
    """Objects of the serving stack, and frames of its code, among cyclic garbage."""
    found: Counter[str] = Counter()
    for obj in garbage:
        if isinstance(obj, types.FrameType):
            where = obj.f_code.co_filename
            if where.startswith(GATEWAY_ROOT) or any(f"/{p}/" in where for p in SERVING):
                found[f"frame {obj.f_code.co_name} ({where.rsplit('/', 1)[-1]})"] += 1
            continue
        module = type(obj).__module__ or ""
        if module.split(".")[0] in SERVING:
            found[f"{module}.{type(obj).__name__}"] += 1
    return found


@contextmanager
def cycles_kept() -> Iterator[list[object]]:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    kept: list[object] = []
    try:
        yield kept
        gc.collect()
        kept.extend(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


async def chat(gw: ServedGateway, upstream: ScriptedUpstream, **fields: object) -> object:
    headers = AUTH if fields.pop("auth", True) else {}
    return await gw.client.post("/v1/chat/completions", json=CHAT | fields, headers=headers)


async def upstream_refuses_our_key(gw: ServedGateway, upstream: ScriptedUpstream) -> object:
    upstream.script.statuses = [401]  # the gateway answers 502
    return await chat(gw, upstream)


async def hang_up_mid_stream(gw: ServedGateway, upstream: ScriptedUpstream) -> None:
    upstream.script.chunks, upstream.script.chunk_delay = 50, 0.01
    body = {**CHAT, "stream": True}
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        await anext(r.aiter_bytes())
    await wait_until(lambda: gw.metric("vkit_gateway_in_flight_requests") == 0)
    upstream.script.chunks, upstream.script.chunk_delay = 4, 0.0


Kind = Callable[[ServedGateway, ScriptedUpstream], Awaitable[object]]
KINDS: dict[str, Kind] = {
    "200": chat,
    "200 stream": lambda gw, up: chat(gw, up, stream=True),
    "200 models": lambda gw, up: gw.client.get("/v1/models", headers=AUTH),
    "401": lambda gw, up: chat(gw, up, auth=False),
    "404 model": lambda gw, up: chat(gw, up, model="nope"),
    "429": lambda gw, up: chat(gw, up, max_tokens=3000),
    "502": upstream_refuses_our_key,
    "499": hang_up_mid_stream,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_requests_leave_no_cycles_in_the_serving_stack(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, kind: str
) -> None:
    gw = await start_gateway(limiter=RecordingLimiter(refuse_above=2000))
    send = KINDS[kind]
    for _ in range(3):  # warm: lazy imports, caches, pooled connections
        await send(gw, upstream)
    with cycles_kept() as garbage:
        for _ in range(20):
            await send(gw, upstream)
    assert serving_garbage(garbage) == Counter()


def test_the_garbage_check_can_fail() -> None:
    class Node:
        pass

    Node.__module__ = "gateway.example"
    with cycles_kept() as garbage:
        node = Node()
        node.me = node  # type: ignore[attr-defined]
        del node
    assert serving_garbage(garbage) == Counter({"gateway.example.Node": 1})
