"""The one readiness rule: /health 200, /v1/models (asked with the API key) listing the model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from launcher.supervision.readiness import ReadinessCheck, model_ids
from launcher.supervision.readiness_probe import VllmProbe
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread


def listing(*models: str) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": m} for m in models]}).encode()


@pytest.mark.parametrize(
    ("health", "status", "body", "ready", "reason"),
    [
        (None, None, None, False, "/health answered nothing"),
        (503, None, None, False, "/health answered 503"),
        (200, 401, b'{"error":"Unauthorized"}', False, "refused the API key"),
        (200, 200, b"<html>", False, "not a model list"),
        (200, 200, listing(), False, "lists no model yet"),
        (200, 200, listing("other"), False, "does not list tiny-llama"),
        (200, 200, listing("tiny-llama", "other"), True, "serving other, tiny-llama"),
    ],
)
def test_verdict_needs_health_and_the_expected_model(
    health: int | None, status: int | None, body: bytes | None, ready: bool, reason: str
) -> None:
    verdict = ReadinessCheck.of(models=["tiny-llama"]).verdict(health, status, body)
    assert verdict.ready is ready
    assert reason in verdict.reason


def test_any_model_will_do_when_none_is_expected() -> None:
    assert ReadinessCheck().verdict(200, 200, listing("m")).ready
    assert model_ids(b'{"data": [{"id": 1}, {"id": "a"}, "x"]}') == {"a"}


@pytest.fixture
def vllm() -> Iterator[ScriptedUpstream]:
    """``/health`` open, ``/v1/models`` behind ``--api-key`` once the script names one."""
    with standin_in_thread(Script(models=[])) as upstream:
        yield upstream


def test_probe_wants_health_and_the_model_listed(vllm: ScriptedUpstream) -> None:
    probe = VllmProbe(vllm.url, timeout_s=2.0)
    assert probe.healthy() and not probe.ready()  # /health answers before the model is served
    vllm.script.models = ["tiny-llama"]
    assert probe.ready()
    assert VllmProbe(vllm.url, ReadinessCheck.of(models=["tiny-llama"])).ready()
    assert not VllmProbe(vllm.url, ReadinessCheck.of(models=["other-model"])).ready()
    assert not VllmProbe("http://127.0.0.1:9", timeout_s=0.5).ready()  # nothing listening


def test_probe_sends_the_api_key(vllm: ScriptedUpstream) -> None:
    vllm.script.models, vllm.script.api_key = ["tiny-llama"], "s3cret"
    without = VllmProbe(vllm.url, ReadinessCheck.of(models=["tiny-llama"])).verdict()
    assert not without.ready and "401" in without.reason
    check = ReadinessCheck.of("s3cret", ["tiny-llama"])
    assert VllmProbe(vllm.url, check).ready()
    assert "s3cret" not in repr(check)  # the key never shows in logs
