"""Issue 4, items 8-9: a gateway timeout and a client disconnect both stop the engine."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.clients import IGNORE_EOS, replica_sum, sdk, wait_for
from tests.e2e.conftest import MODEL, KeyFactory, metrics_text
from tests.e2e.prom import sample_sum

pytestmark = pytest.mark.engine

LONG = 1500  # tokens: seconds of generation on the CPU engine, far past the timeouts


def running(replicas: list[Any]) -> float:
    return sum(replica_sum(replicas, "vllm:num_requests_running"))


def generated(replicas: list[Any]) -> float:
    return sum(replica_sum(replicas, "vllm:generation_tokens_total"))


def test_gateway_timeout_is_a_504_envelope_and_aborts_the_engine(
    gateway_strict: str, new_key: KeyFactory, vllm_replicas: list[Any]
) -> None:
    client = sdk(gateway_strict, new_key(gateway_strict, concurrency=4, max_tokens=2048).secret)
    before = generated(vllm_replicas)
    with pytest.raises(openai.APIStatusError) as timed_out:
        client.completions.create(
            model=MODEL, prompt="Tell a long story", max_tokens=LONG, extra_body=IGNORE_EOS
        )
    assert timed_out.value.status_code == 504
    body = timed_out.value.body
    assert isinstance(body, dict) and body.get("type") == "timeout_error"
    wait_for(lambda: running(vllm_replicas) == 0, 10, "vllm:num_requests_running == 0")
    assert 0 < generated(vllm_replicas) - before < LONG


def test_client_disconnect_aborts_upstream_and_counts_its_tokens(
    gateway: str, new_key: KeyFactory, vllm_replicas: list[Any]
) -> None:
    key = new_key(gateway, concurrency=4, max_tokens=2048)
    before = generated(vllm_replicas)
    received = 0
    body = {"model": MODEL, "prompt": "Tell a long story", "max_tokens": LONG, "stream": True}
    headers = {"Authorization": f"Bearer {key.secret}"}
    with httpx.stream(
        "POST",
        f"{gateway}/v1/completions",
        json={**body, **IGNORE_EOS},
        headers=headers,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += len(json.loads(line[6:])["choices"])
            if received >= 5:
                break  # leaving the block closes the connection mid-stream
    wait_for(lambda: running(vllm_replicas) == 0, 10, "vllm:num_requests_running == 0")
    produced = generated(vllm_replicas) - before
    assert received <= produced < LONG

    def counted() -> float:
        text = metrics_text(gateway)
        return sample_sum(text, "vkit_gateway_tokens_total", key=key.name, direction="completion")

    wait_for(lambda: counted() >= received, 10, "the aborted stream's tokens to be counted")
    assert counted() <= produced
