"""Clients for the E2E tests: the OpenAI and Anthropic SDKs against a gateway, and replica
metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import openai

from tests.e2e.prom import sample_sum

IGNORE_EOS = {"ignore_eos": True}  # vLLM extra param: generate exactly max_tokens


def sdk(base_url: str, secret: str, timeout: float = 60.0) -> openai.OpenAI:
    """An OpenAI SDK client for a gateway; no SDK retries, so 429s and 5xx show."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0, timeout=timeout)


def anthropic_sdk(base_url: str, secret: str, timeout: float = 60.0) -> anthropic.Anthropic:
    """An Anthropic SDK client for a gateway (its key sent as ``x-api-key``, as the SDK
    does); no SDK retries."""
    return anthropic.Anthropic(base_url=base_url, api_key=secret, max_retries=0, timeout=timeout)


def replica_sum(replicas: list[Any], name: str, **labels: str) -> list[float]:
    """``name`` summed over matching series, one value per replica."""
    return [sample_sum(r.metrics_text(), name, **labels) for r in replicas]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
