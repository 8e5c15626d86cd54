"""Issue 4, items 1-3: completions through gateway -> NGINX -> two vLLM replicas."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.clients import IGNORE_EOS, replica_sum, sdk
from tests.e2e.conftest import MODEL, KeyFactory

pytestmark = pytest.mark.engine

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def test_chat_completion_returns_exactly_max_tokens(gateway: str, new_key: KeyFactory) -> None:
    reply = sdk(gateway, new_key(gateway).secret).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, extra_body=IGNORE_EOS
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_text_completion_returns_exactly_max_tokens(gateway: str, new_key: KeyFactory) -> None:
    reply = sdk(gateway, new_key(gateway).secret).completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, extra_body=IGNORE_EOS
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert isinstance(reply.choices[0].text, str)


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_stream_has_usage_only_when_asked(gateway: str, new_key: KeyFactory, kind: str) -> None:
    client = sdk(gateway, new_key(gateway).secret)

    def stream(**extra: Any) -> list[Any]:
        if kind == "chat":
            chunks = client.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                max_tokens=4,
                stream=True,
                extra_body=IGNORE_EOS,
                **extra,
            )
        else:
            chunks = client.completions.create(
                model=MODEL,
                prompt="Hello",
                max_tokens=4,
                stream=True,
                extra_body=IGNORE_EOS,
                **extra,
            )
        return list(chunks)

    plain = stream()
    assert len([c for c in plain if c.choices]) >= 2
    assert all(getattr(c, "usage", None) is None for c in plain)

    with_usage = stream(stream_options={"include_usage": True})
    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 4
    assert all(c.usage is None for c in with_usage[:-1])


def test_requests_are_spread_across_both_replicas(
    gateway: str, new_key: KeyFactory, vllm_replicas: list[Any]
) -> None:
    client = sdk(gateway, new_key(gateway).secret)
    before = replica_sum(vllm_replicas, "vllm:request_success_total")
    for _ in range(6):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    after = replica_sum(vllm_replicas, "vllm:request_success_total")
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 6
    assert all(count >= 1 for count in served), served


def test_max_tokens_above_the_key_cap_is_clamped(gateway: str, new_key: KeyFactory) -> None:
    capped = new_key(gateway, concurrency=4, max_tokens=8)
    reply = sdk(gateway, capped.secret).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=50, extra_body=IGNORE_EOS
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8  # the key's cap, with ignore_eos exactly that


def test_max_tokens_above_the_key_cap_is_rejected_when_configured(
    gateway_strict: str, new_key: KeyFactory
) -> None:
    client = sdk(gateway_strict, new_key(gateway_strict, concurrency=4, max_tokens=8).secret)
    with pytest.raises(openai.BadRequestError) as rejected:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    assert rejected.value.status_code == 400
    body = rejected.value.body
    assert isinstance(body, dict) and body.get("param") == "max_tokens"
