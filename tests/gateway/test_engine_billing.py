"""Billing against real vLLM CPU replicas (slow tier: ``-m engine``).

What the scripted upstream cannot show: the tokens a key is billed for a stream the client
cut are the tokens vLLM says it generated (``vllm:generation_tokens_total``), even when
vLLM packs several tokens into each chunk (``stream_interval``), and ``n=2`` is reserved and
billed as two completions.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.body import estimate_prompt_tokens
from tests.engine import MAX_MODEL_LEN
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.gateway.test_engine import MODEL, gateway_for, replicas_sum, settled_sum
from tests.vkit.stack.test_processes import autogroup

pytestmark = pytest.mark.engine

GENERATED = "vllm:generation_tokens_total"
COMPLETION_TOKENS = {"key": "alice", "direction": "completion"}
STREAM_INTERVAL = 4  # tokens per chunk: chunks alone would bill a quarter of the tokens
EVENTS_READ = 10
# vLLM holds up to STREAM_INTERVAL - 1 tokens for the next chunk, and generates a few more
# before it sees the closed connection: 2-8 on a quiet machine, up to 20 with the other core
# busy (docs/vllm-server.md#client-disconnects-and-aborts).
TOLERANCE = STREAM_INTERVAL + 24
TRIES = 5
# When a generating replica's processes held both CPUs (as when each replica had a session,
# and so a scheduling group, of its own: docs/vllm-server.md#one-scheduling-group), every other
# process (these tests, vLLM's own API server) waited, runnable, for 0.7-4.6 s. A try in which
# this loop was held that long shows the machine, not the gateway: vLLM's server could not see
# the cut either, and its engine generated on, tokens never sent. Such a try is made again.
STALL_S = 0.5


class LoopStalls:
    """The longest this event loop went without running a 10 ms heartbeat, while entered."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        clock = asyncio.get_running_loop().time
        last = clock()
        while True:
            await asyncio.sleep(0.01)
            now = clock()
            self.longest = max(self.longest, now - last - 0.01)
            last = now

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def idle(replicas: list[Any]) -> None:
    async with asyncio.timeout(30):
        while await replicas_sum(replicas, "vllm:num_requests_running") > 0:
            await asyncio.sleep(0.2)


@dataclass
class Cut:
    """One stream read for EVENTS_READ events and closed, and what vLLM and the key saw."""

    arrivals: list[float]  # seconds from the request to each chunk the client read
    at_cut: float  # tokens vLLM had generated when the client closed
    generated: float  # tokens vLLM generated in all
    billed: float  # completion tokens the key was charged
    stalled: float  # the longest this loop was held from the request to the count at the cut

    def story(self) -> str:
        return (
            f"chunks at {self.arrivals} s; {self.at_cut:g} tokens at the cut, "
            f"{self.generated:g} in all, {self.billed:g} billed; loop held {self.stalled:.2f} s"
        )

    def shows_an_abort(self, max_tokens: int) -> bool:
        """The cut came while vLLM was generating, on a machine that ran the gateway."""
        return self.at_cut < max_tokens / 2 and self.stalled < STALL_S


async def cut_stream(gw: Any, replicas: list[Any], body: dict[str, Any]) -> Cut:
    await idle(replicas)
    before = await settled_sum(replicas, GENERATED)
    billed_before = gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS)
    clock = asyncio.get_running_loop().time
    started, arrivals = clock(), []
    async with LoopStalls() as stalls:
        async with gw.client.stream("POST", "/v1/completions", json=body, headers=AUTH) as r:
            received = b""
            async for chunk in r.aiter_bytes():
                received += chunk
                arrivals.append(round(clock() - started, 3))
                if received.count(b"data: ") >= EVENTS_READ:
                    break
            assert r.status_code == 200, received
            assert b"usage" not in received  # the per-chunk usage the gateway asked for is gone
        at_cut = await replicas_sum(replicas, GENERATED) - before
    await idle(replicas)
    generated = await settled_sum(replicas, GENERATED) - before
    await wait_until(
        lambda: gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS) > billed_before
    )
    billed = gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS) - billed_before
    return Cut(arrivals, at_cut, generated, billed, stalls.longest)


async def test_a_cut_stream_bills_what_vllm_generated(
    vllm_replicas: list[Any], start_gateway: GatewayFactory
) -> None:
    gw = await gateway_for(vllm_replicas, start_gateway)
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "Once upon a time, in a land far away, there lived a",
        "max_tokens": MAX_MODEL_LEN - 64,
        "ignore_eos": True,
        "stream": True,
        "stream_interval": STREAM_INTERVAL,
    }
    # The cut must come while vLLM is still generating, on a machine that runs the gateway
    # and vLLM's server (STALL_S). When the machine held every process but vLLM's engine, a
    # chunk reached the client 3-5 s late (chunks at 0.03, 0.12, 5.1 s), by which time the
    # engine had generated 1810 of 1984 tokens (or all of them); or the cut came in time
    # and vLLM's server saw it seconds late (10 chunks in 0.09 s, 703 generated): such a
    # try shows nothing about aborts, and is made again.
    cuts = []
    for _ in range(TRIES):
        cuts.append(await cut_stream(gw, vllm_replicas, body))
        if cuts[-1].shows_an_abort(body["max_tokens"]):
            break
    cut = cuts[-1]
    stories = "; ".join(c.story() for c in cuts)
    assert cut.shows_an_abort(body["max_tokens"]), f"no try cut vLLM mid-answer: {stories}"
    assert cut.generated >= EVENTS_READ * STREAM_INTERVAL / 2, stories
    # Aborted at the cut: had vLLM not seen the closed connection, it would have gone on to
    # max_tokens after it.
    assert cut.generated - cut.at_cut <= TOLERANCE, stories
    assert cut.generated - TOLERANCE <= cut.billed <= cut.generated, stories


def test_every_replica_process_is_scheduled_in_the_tests_group(
    vllm_replicas: list[Any],
) -> None:
    """vkit launch, vLLM's API server, its engine core and worker: all in the tests' session,
    so that the kernel's autogroup does not give a generating replica the CPUs apart."""
    import psutil

    ours = autogroup("self")
    for replica in vllm_replicas:
        tree = psutil.Process(replica.pid).children(recursive=True)
        assert len(tree) >= 2, "vkit launch, then vLLM's server and its engine core"
        for process in [psutil.Process(replica.pid), *tree]:
            assert os.getsid(process.pid) == os.getsid(0), process.cmdline()
            assert autogroup(process.pid) == ours, process.cmdline()


async def test_n_2_is_reserved_and_billed_twice(
    vllm_replicas: list[Any], start_gateway: GatewayFactory
) -> None:
    gw = await gateway_for(vllm_replicas, start_gateway)
    await idle(vllm_replicas)
    messages = [{"role": "user", "content": "Tell me a story."}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 5, "n": 2, "ignore_eos": True}
    before = await settled_sum(vllm_replicas, GENERATED)
    response = await gw.client.post("/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 10
    lease = gw.limiter.leases[-1]
    assert lease.reserved == estimate_prompt_tokens(body) + 2 * 5
    assert lease.settled == [usage["total_tokens"]]
    generated = await settled_sum(vllm_replicas, GENERATED) - before
    assert generated == 10

    # streamed, without the client asking for usage: both choices billed, no usage relayed
    before = await settled_sum(vllm_replicas, GENERATED)
    stream = {**body, "stream": True}
    response = await gw.client.post("/v1/chat/completions", json=stream, headers=AUTH, timeout=60)
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])
    await wait_until(lambda: len(gw.limiter.leases[-1].settled) == 1)
    assert gw.limiter.leases[-1].reserved == estimate_prompt_tokens(stream) + 2 * 5
    generated = await settled_sum(vllm_replicas, GENERATED) - before
    assert generated == 10
    assert gw.metric("vkit_gateway_tokens_total", COMPLETION_TOKENS) == 10 + 10
