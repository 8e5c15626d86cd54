"""Issue 4, item 10 (first half): the gateway's /metrics shows the test's traffic."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.clients import IGNORE_EOS, sdk
from tests.e2e.conftest import KEYS, MODEL
from tests.e2e.prom import sample_sum

pytestmark = pytest.mark.engine


def test_metrics_show_requests_tokens_latency_and_limits(
    gateway: str, secrets: dict[str, str]
) -> None:
    rpm = KEYS["metrics"][0]
    client = sdk(gateway, secrets["metrics"])
    for _ in range(rpm):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, extra_body=IGNORE_EOS)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)

    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    ok = sample_sum(text, "vkit_gateway_requests_total", key="metrics", status="200")
    assert ok == rpm
    completion = sample_sum(
        text, "vkit_gateway_tokens_total", key="metrics", direction="completion"
    )
    assert completion == 3 * rpm
    assert sample_sum(text, "vkit_gateway_tokens_total", key="metrics", direction="prompt") > 0
    assert (
        sample_sum(text, "vkit_gateway_rate_limited_total", key="metrics", reason="requests") == 1
    )
    assert sample_sum(text, "vkit_gateway_request_duration_seconds_count", model=MODEL) >= rpm
    assert "vllm:" not in text
