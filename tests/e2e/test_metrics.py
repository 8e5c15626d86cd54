"""Issue 4, item 10 (first half): the gateway's /metrics shows the test's traffic."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.clients import IGNORE_EOS, sdk
from tests.e2e.conftest import MODEL, KeyFactory, metrics_text
from tests.e2e.prom import sample_sum

pytestmark = pytest.mark.engine


def test_metrics_show_requests_tokens_latency_and_limits(gateway: str, new_key: KeyFactory) -> None:
    rpm = 2
    key = new_key(gateway, rpm=rpm, concurrency=4)
    client = sdk(gateway, key.secret)
    for _ in range(rpm):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, extra_body=IGNORE_EOS)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)

    assert httpx.get(f"{gateway}/metrics", timeout=5).status_code == 404  # admin port only
    text = metrics_text(gateway)
    ok = sample_sum(text, "vkit_gateway_requests_total", key=key.name, status="200")
    assert ok == rpm
    completion = sample_sum(text, "vkit_gateway_tokens_total", key=key.name, direction="completion")
    assert completion == 3 * rpm
    assert sample_sum(text, "vkit_gateway_tokens_total", key=key.name, direction="prompt") > 0
    assert sample_sum(text, "vkit_gateway_rate_limited_total", key=key.name, reason="requests") == 1
    timed = sample_sum(
        text, "vkit_gateway_request_duration_seconds_count", key=key.name, model=MODEL
    )
    assert timed == rpm
    # the 429 is answered, counted and timed too; refused before its body was read, it names
    # no model (docs/gateway-bodies.md)
    refused = sample_sum(
        text, "vkit_gateway_request_duration_seconds_count", key=key.name, model="none"
    )
    assert refused == 1
    assert sample_sum(text, "vkit_gateway_requests_total", key=key.name, status="429") == 1
    assert "vllm:" not in text
