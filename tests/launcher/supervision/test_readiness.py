"""The one readiness rule: /health 200, /v1/models (asked with the API key) listing the model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import ClassVar

import pytest

from launcher.supervision.readiness import ReadinessCheck, model_ids
from launcher.supervision.readiness_probe import VllmProbe
from tests.launcher.supervision.http_stub import QuietHandler, serving


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


class _FakeVllm(QuietHandler):
    """``/health`` open, ``/v1/models`` behind ``--api-key`` (as vLLM guards /v1 paths)."""

    served: ClassVar[list[str]] = []
    api_key: ClassVar[str | None] = None

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, b"")
        elif self.path != "/v1/models":
            self._answer(404, b"")
        elif self.api_key and self.headers.get("authorization") != f"Bearer {self.api_key}":
            self._answer(401, b'{"error":"Unauthorized"}')
        else:
            self._answer(200, listing(*self.served))


@pytest.fixture
def fake_vllm() -> Iterator[str]:
    try:
        with serving(_FakeVllm) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        _FakeVllm.served, _FakeVllm.api_key = [], None


def test_probe_wants_health_and_the_model_listed(fake_vllm: str) -> None:
    _FakeVllm.served = []
    probe = VllmProbe(fake_vllm, timeout_s=2.0)
    assert probe.healthy() and not probe.ready()  # /health answers before the model is served
    _FakeVllm.served = ["tiny-llama"]
    assert probe.ready()
    assert VllmProbe(fake_vllm, ReadinessCheck.of(models=["tiny-llama"])).ready()
    assert not VllmProbe(fake_vllm, ReadinessCheck.of(models=["other-model"])).ready()
    assert not VllmProbe("http://127.0.0.1:9", timeout_s=0.5).ready()  # nothing listening


def test_probe_sends_the_api_key(fake_vllm: str) -> None:
    _FakeVllm.served, _FakeVllm.api_key = ["tiny-llama"], "s3cret"
    without = VllmProbe(fake_vllm, ReadinessCheck.of(models=["tiny-llama"])).verdict()
    assert not without.ready and "401" in without.reason
    check = ReadinessCheck.of("s3cret", ["tiny-llama"])
    assert VllmProbe(fake_vllm, check).ready()
    assert "s3cret" not in repr(check)  # the key never shows in logs
