"""Admission caps and priority classes on a real vLLM CPU replica behind the gateway (slow
tier: ``-m engine``): one replica with ``--max-num-queued-reqs 4``, ``--scheduling-policy
priority`` and one request running at a time (``tests.engine.capped_replica``).

Behaviour only, no timings (bench/admission.py measures them): a burst past the cap gets
the gateway's own 503 + ``Retry-After`` for what vLLM refused, the admitted requests are
served whole; with batch requests waiting, an interactive one is served before them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.priority_class import BATCH
from gateway.upstream_call import UPSTREAMS_FULL
from tests.engine import CAPPED_QUEUED_REQS
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key
from tests.gateway.test_engine import MODEL, chat, vllm_sample_sum

pytestmark = pytest.mark.engine

BATCH_SECRET = "sk-test-bob"
BATCH_AUTH = {"Authorization": f"Bearer {BATCH_SECRET}"}
KEYS = {SECRET: Key("alice"), BATCH_SECRET: Key("bob", scheduling_priority=BATCH)}


async def capped_gateway(replica: Any, start_gateway: GatewayFactory) -> ServedGateway:
    gw = await start_gateway(
        upstreams=[replica.base_url],
        keys=KEYS,
        health={"interval": 0.5, "expected_models": [MODEL]},
        timeouts={"first_byte": 120, "total": 300},
    )
    await wait_until(lambda: gw.app.running.pool.any_ready, timeout=10)
    return gw


async def waiting(replica: Any) -> float:
    page = await asyncio.to_thread(replica.metrics_text)
    return vllm_sample_sum(page, "vllm:num_requests_waiting")


# First in the module: on a replica the burst has warmed up, the tiny model's requests
# ran through before the poll saw two waiting.
async def test_an_interactive_request_is_served_before_waiting_batch_requests(
    capped_replica: Any, start_gateway: GatewayFactory
) -> None:
    gw = await capped_gateway(capped_replica, start_gateway)
    finished: dict[str, float] = {}

    async def send(name: str, auth: dict[str, str], max_tokens: int) -> None:
        answer = await gw.client.post(
            "/v1/chat/completions", json=chat(max_tokens), headers=auth, timeout=300
        )
        assert answer.status_code == 200, answer.text
        finished[name] = time.monotonic()

    # One batch request running (max-num-seqs 1), two waiting behind it, then an interactive
    # one: vLLM takes it before the waiting batch requests. The tiny model is fast on a quiet
    # machine: when the batch was over before the poll saw two waiting, again, twice as long.
    for tokens in (256, 512, 1024, 1800):
        finished.clear()
        batch = [asyncio.create_task(send(f"batch{i}", BATCH_AUTH, tokens)) for i in range(3)]
        while await waiting(capped_replica) < 2 and not all(task.done() for task in batch):
            await asyncio.sleep(0.05)
        if not all(task.done() for task in batch):
            break
        await asyncio.gather(*batch)
    else:
        pytest.fail("the batch requests never waited in vLLM's queue")
    await send("interactive", AUTH, 8)
    await asyncio.gather(*batch)
    order = sorted(finished, key=finished.__getitem__)
    assert order.index("interactive") <= 1, order  # after at most the batch one running


async def test_a_burst_past_the_cap_is_refused_by_the_gateway_not_by_vllm(
    capped_replica: Any, start_gateway: GatewayFactory
) -> None:
    gw = await capped_gateway(capped_replica, start_gateway)
    burst = 3 * CAPPED_QUEUED_REQS
    answers = await asyncio.gather(
        *(
            gw.client.post("/v1/chat/completions", json=chat(48), headers=AUTH, timeout=300)
            for _ in range(burst)
        )
    )
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served, "nothing was admitted"
    assert refused, "nothing was refused: the cap was not passed"
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["code"] == UPSTREAMS_FULL  # not vLLM's own body
    for answer in served:
        assert answer.json()["usage"]["completion_tokens"] == 48  # admitted: served whole
    page = await asyncio.to_thread(capped_replica.metrics_text)
    rejected = vllm_sample_sum(page, "vllm:admission_rejections_total")
    assert rejected == len(refused)  # each refused request reached vLLM once
    assert gw.metric(
        "vkit_gateway_upstream_refused_total", {"reason": "max_num_queued_reqs"}
    ) == len(refused)
