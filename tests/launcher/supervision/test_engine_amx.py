"""On AMX CPUs, a fresh CPU engine survives a 2-token first prompt (slow tier, AMX only).

vLLM 0.32's CPU worker died on the first tiny prompt of a fresh engine on AMX machines,
5 of 5 starts (docs/cpu-engine.md#amx-cpus); ``vkit launch --cpu`` now asks Linux for AMX tile
state in every engine process (:mod:`launcher.supervision.amx_site`). The replica here is
started exactly as users start one -- nothing AMX-specific in the test's environment -- and
its very first generation request has a 2-token prompt, then 20 more short ones follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine import EngineReplica
from tests.launcher.supervision.test_amx import cpu_has_amx
from vkit.stack.ports import free_port

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        not cpu_has_amx(),
        reason="no amx_tile in /proc/cpuinfo: the AMX worker crash cannot happen on this CPU",
    ),
]

SHORT_PROMPTS = 20


@pytest.fixture
def fresh_replica(tiny_model_dir: Path, tmp_path: Path) -> Iterator[EngineReplica]:
    """A replica of its own: the session's replicas may have served long prompts already."""
    replica = EngineReplica(
        model_dir=tiny_model_dir, port=free_port(), cpu_core=0, log_path=tmp_path / "amx.log"
    )
    replica.start()
    try:
        replica.wait_ready()
        yield replica
    finally:
        replica.stop()


def test_a_two_token_first_prompt_does_not_kill_the_worker(fresh_replica: EngineReplica) -> None:
    url = f"{fresh_replica.base_url}/v1/completions"
    body = {"model": fresh_replica.model, "max_tokens": 2, "ignore_eos": True}
    first = httpx.post(url, json={**body, "prompt": [7, 8]}, timeout=120.0)  # 2 token ids
    assert first.status_code == 200, f"{first.text}\n{fresh_replica.log_tail()}"
    assert first.json()["usage"]["prompt_tokens"] == 2
    for _ in range(SHORT_PROMPTS):
        again = httpx.post(url, json={**body, "prompt": "hi"}, timeout=120.0)
        assert again.status_code == 200, f"{again.text}\n{fresh_replica.log_tail()}"
    assert httpx.get(f"{fresh_replica.base_url}/health", timeout=10.0).status_code == 200
    assert "died unexpectedly" not in fresh_replica.log_tail(200)
