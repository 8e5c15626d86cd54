"""Issue 23, the agent APIs: the OpenAI SDK's ``responses.create`` and the Anthropic SDK's
``messages.create``, whole and streamed, through the gateway to real vLLM CPU replicas; a
key's limit answered as a 429 in each API's envelope; every token billed, as the gateway's
metrics show, equal to what vLLM reported to the client."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.e2e.clients import anthropic_sdk, sdk
from tests.e2e.conftest import MODEL, KeyFactory, metrics_text
from tests.e2e.prom import sample_sum

pytestmark = pytest.mark.engine


def billed(gateway: str, key: str) -> tuple[float, float]:
    """(prompt, completion) tokens the gateway's metrics show for ``key``."""
    text = metrics_text(gateway)
    prompt = sample_sum(text, "vkit_gateway_tokens_total", key=key, direction="prompt")
    completion = sample_sum(text, "vkit_gateway_tokens_total", key=key, direction="completion")
    return prompt, completion


def test_responses_whole_and_streamed_are_billed_as_reported(
    gateway: str, new_key: KeyFactory
) -> None:
    key = new_key(gateway)
    client = sdk(gateway, key.secret)
    whole = client.responses.create(model=MODEL, input="Hello", max_output_tokens=4)
    assert whole.usage is not None and whole.usage.output_tokens <= 4
    stream = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Hi there"}],
        instructions="Answer briefly.",
        max_output_tokens=4,
        stream=True,
    )
    events = list(stream)
    assert events[-1].type == "response.completed"
    done = events[-1].response.usage
    assert done is not None
    prompt = whole.usage.input_tokens + done.input_tokens
    completion = whole.usage.output_tokens + done.output_tokens
    assert billed(gateway, key.name) == (prompt, completion)
    text = metrics_text(gateway)
    assert sample_sum(text, "vkit_gateway_usage_missing_total", key=key.name) == 0
    ok = sample_sum(text, "vkit_gateway_requests_total", key=key.name, model=MODEL, status="200")
    assert ok == 2


def test_messages_whole_and_streamed_are_billed_as_reported(
    gateway: str, new_key: KeyFactory
) -> None:
    key = new_key(gateway)
    client = anthropic_sdk(gateway, key.secret)
    whole = client.messages.create(
        model=MODEL,
        max_tokens=4,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert whole.type == "message" and whole.usage.output_tokens <= 4
    with client.messages.stream(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert isinstance(streamed_text, str)
    prompt = whole.usage.input_tokens + final.usage.input_tokens
    completion = whole.usage.output_tokens + final.usage.output_tokens
    assert billed(gateway, key.name) == (prompt, completion)


def test_a_keys_limit_is_a_429_in_each_apis_envelope(gateway: str, new_key: KeyFactory) -> None:
    rpm = 2
    key = new_key(gateway, rpm=rpm, concurrency=4)
    openai_client = sdk(gateway, key.secret)
    anthropic_client = anthropic_sdk(gateway, key.secret)
    openai_client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    anthropic_client.messages.create(
        model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
    )
    with pytest.raises(openai.RateLimitError) as responses_limited:
        openai_client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    body = responses_limited.value.body
    assert isinstance(body, dict) and body.get("type") == "rate_limit_error"
    assert responses_limited.value.response.headers.get("retry-after")
    with pytest.raises(anthropic.RateLimitError) as messages_limited:
        anthropic_client.messages.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
        )
    limited = messages_limited.value.body
    assert isinstance(limited, dict) and limited["type"] == "error"
    assert limited["error"]["type"] == "rate_limit_error"
    assert messages_limited.value.response.headers.get("retry-after")
    text = metrics_text(gateway)
    assert sample_sum(text, "vkit_gateway_rate_limited_total", key=key.name) == 2
    assert sample_sum(text, "vkit_gateway_requests_total", key=key.name, status="429") == 2


def test_a_messages_body_vllm_refuses_is_an_anthropic_error(
    gateway: str, new_key: KeyFactory
) -> None:
    client = anthropic_sdk(gateway, new_key(gateway).secret)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "user", "content": [{"type": "no-such-block"}]}],  # type: ignore[list-item]
        )
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
