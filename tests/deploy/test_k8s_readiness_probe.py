"""The vLLM readiness probe means "serves the model": run the built overlay's exec probe
against a real HTTP server that answers as vLLM does (``--api-key`` on ``/v1``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.deploy.test_k8s_render import built
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread

pytestmark = pytest.mark.integration

KEY = "probe-test-key"


@pytest.fixture
def server() -> Iterator[ScriptedUpstream]:
    with standin_in_thread(Script(api_key=KEY)) as upstream:
        yield upstream


def probe(server: ScriptedUpstream, key: str) -> int:
    """Exit status of the rtx4090 overlay's readiness command, pointed at ``server``."""
    sts = next(o for o in built("rtx4090-llama-3.1-8b-awq") if o["kind"] == "StatefulSet")
    command = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    script = command[2].replace("127.0.0.1:8000", server.address)
    result = subprocess.run(
        [sys.executable, "-c", script], env={"VLLM_API_KEY": key}, capture_output=True, timeout=30
    )
    return result.returncode


@pytest.mark.parametrize(
    ("models", "status", "key", "ready"),
    [
        (["llama-3.1-8b"], 200, KEY, True),
        (["other-model"], 200, KEY, False),  # up, but not serving this model
        ([], 200, KEY, False),
        (["llama-3.1-8b"], 503, KEY, False),
        (["llama-3.1-8b"], 200, "wrong-key", False),  # 401: the key is really sent and checked
    ],
)
def test_ready_only_when_the_served_model_is_listed(
    server: ScriptedUpstream, models: list[str], status: int, key: str, ready: bool
) -> None:
    server.script.models, server.script.models_status = models, status
    assert (probe(server, key) == 0) is ready
