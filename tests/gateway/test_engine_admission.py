"""Admission caps and priority classes on a real vLLM CPU replica behind the gateway (slow
tier: ``-m engine``): one replica with ``--max-num-queued-reqs 4``, ``--scheduling-policy
priority`` and one request running at a time (``tests.engine.capped_replica``).

Behaviour only, no timings (bench/admission.py measures them): a burst past the cap gets
the gateway's own 503 + ``Retry-After`` for what vLLM refused, the admitted requests are
served whole. Priority classes: test_engine_priority (a replica of its own: on a replica this
module's burst had warmed up, the tiny model's requests never queued behind each other).
"""

from __future__ import annotations

import asyncio
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
TOKENS = 512  # a burst request's
KEYS = {SECRET: Key("alice"), BATCH_SECRET: Key("bob", scheduling_priority=BATCH)}


async def capped_gateway(replica: Any, start_gateway: GatewayFactory) -> ServedGateway:
    gw = await start_gateway(
        upstreams=[replica.base_url],
        keys=KEYS,
        # a busy CPU replica's API server may answer a probe seconds late: not "down"
        # (docs/vllm-server.md#priority-scheduling)
        health={"interval": 0.5, "timeout": 30, "expected_models": [MODEL]},
        timeouts={"first_byte": 120, "total": 300},
    )
    await wait_until(lambda: gw.app.running.pool.any_ready, timeout=10)
    return gw


async def rejections(replica: Any) -> float:
    page = await asyncio.to_thread(replica.metrics_text)
    return vllm_sample_sum(page, "vllm:admission_rejections_total")


async def waiting(replica: Any) -> float:
    page = await asyncio.to_thread(replica.metrics_text)
    return vllm_sample_sum(page, "vllm:num_requests_waiting")


async def test_a_burst_past_the_cap_is_refused_by_the_gateway_not_by_vllm(
    capped_replica: Any, start_gateway: GatewayFactory
) -> None:
    gw = await capped_gateway(capped_replica, start_gateway)
    before = await rejections(capped_replica)  # the module's other tests share the replica
    burst = 3 * CAPPED_QUEUED_REQS
    # Long enough (TOKENS each, one at a time) that the burst arrives while the first still
    # runs, on a replica warmed up by the module's other test as on a cold one.
    answers = await asyncio.gather(
        *(
            gw.client.post("/v1/chat/completions", json=chat(TOKENS), headers=AUTH, timeout=300)
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
        assert answer.json()["usage"]["completion_tokens"] == TOKENS  # admitted: served whole
    assert await rejections(capped_replica) - before == len(refused)  # each reached vLLM once
    assert gw.metric(
        "vkit_gateway_upstream_refused_total", {"reason": "max_num_queued_reqs"}
    ) == len(refused)
