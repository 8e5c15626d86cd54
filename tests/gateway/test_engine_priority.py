"""Priority classes on a real vLLM CPU replica behind the gateway (slow tier: ``-m engine``):
with batch requests waiting in vLLM's queue, an interactive key's request is served before
them. A replica of its own (module scope): ``--scheduling-policy priority``, one request
running at a time (``--max-num-seqs 1``), no queue cap, so that six batch requests fit.

How it knows the batch is queued: on a small CPU machine one replica keeps two cores busy
(the worker computing on its own core, and vLLM's engine core spinning on the worker's
result queue while requests run), so vLLM's API server, the gateway and this test run in
the gaps: ``/metrics`` pages come back seconds late (one came back after six 1,800-token
requests had all finished) and answers in bursts. A poll that had to see two requests
waiting before three short ones finished lost that race (the test used to skip). Here six
long batch requests go; once the gateway has sent all six on and one streams (it runs, the
others wait behind it), the interactive one goes, and the assertion does not depend on when
the test sees things: it finishes before at least one batch request, where first come,
first served puts it after all six. Behaviour only (bench/admission.py times it, directly
and through the gateway).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.engine import EngineReplica, module_replica
from tests.gateway.conftest import AUTH, GatewayFactory
from tests.gateway.test_engine import chat
from tests.gateway.test_engine_admission import BATCH_AUTH, capped_gateway

pytestmark = pytest.mark.engine

PRIORITY_ARGS = ("--", "--scheduling-policy", "priority", "--max-num-seqs", "1")
BATCH = 6
BATCH_TOKENS = 1800  # with the prompt, under the replicas' max model length


priority_replica = module_replica(PRIORITY_ARGS, "priority")


async def test_an_interactive_request_is_served_before_waiting_batch_requests(
    priority_replica: EngineReplica, start_gateway: GatewayFactory
) -> None:
    gw = await capped_gateway(priority_replica, start_gateway)
    upstream = gw.app.running.pool.upstreams[0]
    finished: dict[str, float] = {}
    streaming = asyncio.Event()  # a batch request's first token came back: vLLM runs it

    async def send(name: str, auth: dict[str, str], max_tokens: int) -> None:
        # A connection of its own: one kept from an earlier round may be idle past uvicorn's
        # keep-alive and closed by it as the POST goes out (the client's ReadError, not ours).
        async with (
            httpx.AsyncClient(base_url=gw.url, timeout=600) as client,
            client.stream(
                "POST", "/v1/chat/completions", json=chat(max_tokens, stream=True), headers=auth
            ) as answer,
        ):
            assert answer.status_code == 200, await answer.aread()
            async for line in answer.aiter_lines():
                if line.startswith("data: {"):
                    streaming.set()
        finished[name] = time.monotonic()

    batch = [asyncio.create_task(send(f"batch{i}", BATCH_AUTH, BATCH_TOKENS)) for i in range(BATCH)]
    # Every batch request sent on by the gateway, and one streaming: the others wait behind
    # it in vLLM's queue (one runs at a time). Streamed tokens, not vLLM's /metrics: on a
    # starved machine a page came back after all six had finished.
    while not (streaming.is_set() and upstream.in_flight >= BATCH):
        assert not any(task.done() for task in batch), "a batch request ended first"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # margin: the gateway's last sends are read by vLLM's server
    await send("interactive", AUTH, 8)
    await asyncio.gather(*batch)
    after = [name for name in finished if finished[name] > finished["interactive"]]
    # First come, first served: none after it (all six were in vLLM's queue before it).
    # Priority: after it, every batch request still waiting when it arrived.
    assert after, "the interactive request finished last"
