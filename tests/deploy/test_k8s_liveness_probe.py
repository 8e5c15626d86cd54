"""The vLLM liveness probe means "alive and making progress": run the built overlay's exec
probe against the vLLM stand-in, serving and hung mid-step (``/health`` 200 both times)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.supervision.progress import STALL_AFTER_S, STATE_PATH
from tests.deploy.test_k8s_render import built
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread

pytestmark = pytest.mark.integration

STALL_S = 0.6  # the committed probe's 120 s, shortened for the test


@pytest.fixture
def replica() -> Iterator[ScriptedUpstream]:
    with standin_in_thread(Script(running=0)) as upstream:
        yield upstream


def liveness_command() -> list[str]:
    sts = next(o for o in built("rtx4090-llama-3.1-8b-awq") if o["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]
    assert probe["timeoutSeconds"] >= 8  # two GETs of up to 4 s each
    command: list[str] = probe["exec"]["command"]
    return command


def probe(replica: ScriptedUpstream, state: Path) -> int:
    """Exit status of the committed liveness command, pointed at ``replica`` and ``state``."""
    command = liveness_command()
    assert command[:2] == ["python3", "-c"]
    flags = command[3:]
    assert flags[flags.index("--stall-after") + 1] == f"{STALL_AFTER_S:g}"
    flags[flags.index("--stall-after") + 1] = str(STALL_S)
    flags[flags.index("--state") + 1] = str(state)
    flags = [flag.replace("127.0.0.1:8000", replica.address) for flag in flags]
    result = subprocess.run(
        [sys.executable, "-c", command[2], *flags], capture_output=True, text=True, timeout=30
    )
    return result.returncode


def test_the_committed_probe_keeps_its_state_in_the_container() -> None:
    command = liveness_command()
    assert command[command.index("--state") + 1] == STATE_PATH
    assert "http://127.0.0.1:8000/metrics" in command


def test_a_hung_engine_fails_the_probe_once_the_window_has_passed(
    replica: ScriptedUpstream, tmp_path: Path
) -> None:
    state = tmp_path / "progress.json"
    replica.script.hung = True  # /health 200, a request running, counters frozen
    assert probe(replica, state) == 0  # the first sample: nothing to compare yet
    time.sleep(STALL_S + 0.1)
    assert probe(replica, state) == 1
    assert probe(replica, state) == 1  # and stays failed: the kubelet restarts it


def test_a_generating_or_idle_engine_passes(replica: ScriptedUpstream, tmp_path: Path) -> None:
    state = tmp_path / "progress.json"
    replica.script.running = 2
    for _ in range(3):
        replica.script.generation_tokens_total += 16  # tokens between two probes
        assert probe(replica, state) == 0
        time.sleep(STALL_S + 0.1)
    replica.script.running = 0  # idle, counters flat
    assert probe(replica, state) == 0
    time.sleep(STALL_S + 0.1)
    assert probe(replica, state) == 0


def test_a_dead_engine_fails_the_probe(replica: ScriptedUpstream, tmp_path: Path) -> None:
    replica.script.health_status = 503  # vLLM's /health once the engine is marked dead
    assert probe(replica, tmp_path / "progress.json") == 1
