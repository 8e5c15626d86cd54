"""Priority classes on a real vLLM CPU replica behind the gateway (slow tier: ``-m engine``):
with batch requests waiting in vLLM's queue, an interactive key's request is served before
them. A replica of its own (module scope): ``--scheduling-policy priority``, one request
running at a time (``--max-num-seqs 1``), no queue cap, so that six batch requests fit.

How it watches vLLM's queue: on a small CPU machine one replica keeps two cores busy (the
worker computing on its own core, and vLLM's engine core spinning on the worker's result
queue while requests run), so vLLM's API server, the gateway and this test run in the gaps:
``/metrics`` pages, answers and streamed tokens come back in bursts, seconds late. A poll
that had to see two requests waiting before three short ones finished lost that race (the
test used to skip). Here six long batch requests queue behind one running, so vLLM's own
gauges say "all in, several waiting" for many seconds, and the assertion does not depend on
when the test sees things: the interactive request finishes before at least one batch
request, where first come, first served puts it after all six. Behaviour only
(bench/admission.py times it, directly and through the gateway).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.engine import EngineReplica, module_replica
from tests.gateway.conftest import AUTH, GatewayFactory
from tests.gateway.test_engine import chat, vllm_sample_sum
from tests.gateway.test_engine_admission import BATCH_AUTH, capped_gateway

pytestmark = pytest.mark.engine

PRIORITY_ARGS = ("--", "--scheduling-policy", "priority", "--max-num-seqs", "1")
BATCH = 6
BATCH_TOKENS = 1800  # with the prompt, under the replicas' max model length
WAITING = 3  # batch requests vLLM must say are waiting before the interactive one goes


priority_replica = module_replica(PRIORITY_ARGS, "priority")


async def queue_state(replica: EngineReplica) -> tuple[float, float, float]:
    """vLLM's running and waiting gauges and its finished-requests counter, one page."""
    page = await asyncio.to_thread(replica.metrics_text)
    return (
        vllm_sample_sum(page, "vllm:num_requests_running"),
        vllm_sample_sum(page, "vllm:num_requests_waiting"),
        vllm_sample_sum(page, "vllm:request_success_total"),
    )


async def test_an_interactive_request_is_served_before_waiting_batch_requests(
    priority_replica: EngineReplica, start_gateway: GatewayFactory
) -> None:
    gw = await capped_gateway(priority_replica, start_gateway)
    finished: dict[str, float] = {}

    async def send(name: str, auth: dict[str, str], max_tokens: int) -> None:
        # A connection of its own: one kept from an earlier round may be idle past uvicorn's
        # keep-alive and closed by it as the POST goes out (the client's ReadError, not ours).
        async with httpx.AsyncClient(base_url=gw.url, timeout=600) as client:
            answer = await client.post("/v1/chat/completions", json=chat(max_tokens), headers=auth)
        assert answer.status_code == 200, answer.text
        finished[name] = time.monotonic()

    *_, done_before = await queue_state(priority_replica)
    batch = [asyncio.create_task(send(f"batch{i}", BATCH_AUTH, BATCH_TOKENS)) for i in range(BATCH)]
    seen: list[tuple[float, float, float]] = []
    # vLLM's word, from one page: every batch request is in (running, waiting or finished)
    # and at least WAITING of them wait. No race with the batch: if they all finish first,
    # the test fails saying what it saw.
    while True:
        running, waiting, done = await queue_state(priority_replica)
        seen.append((running, waiting, done - done_before))
        if running + waiting + done - done_before >= BATCH and waiting >= WAITING:
            break
        assert not all(task.done() for task in batch), f"never {WAITING} waiting: {seen}"
        await asyncio.sleep(0.1)
    await send("interactive", AUTH, 8)
    await asyncio.gather(*batch)
    after = [name for name in finished if finished[name] > finished["interactive"]]
    # First come, first served: none after it (all six were in vLLM's queue before it).
    # Priority: after it, every batch request still waiting when it arrived (all but the
    # few that ran meanwhile, as late as this test learnt of vLLM's queue).
    assert after, f"the interactive request finished last; vLLM's queue as seen: {seen[-3:]}"
