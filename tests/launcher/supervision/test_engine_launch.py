"""Real vLLM (CPU build) started by ``vkit launch`` on the tiny model (slow tier)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from launcher.sizing.fit import CpuTarget, FitRequest, plan_fit
from launcher.sizing.models import load_model
from launcher.supervision.tiny_model import build_tiny_model
from tests.engine import KV_CACHE_SPACE_GIB, MAX_MODEL_LEN, EngineReplica

pytestmark = pytest.mark.engine


def cache_config_labels(metrics: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` in a Prometheus text page."""
    line = next(line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))


def test_chat_completion_through_vkit_launch(vllm_replicas: list[EngineReplica]) -> None:
    replica = vllm_replicas[0]
    response = httpx.post(
        f"{replica.base_url}/v1/chat/completions",
        json={
            "model": replica.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "ignore_eos": True,
        },
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == replica.model
    assert body["usage"]["completion_tokens"] == 8
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_predicted_kv_capacity_matches_vllm(vllm_replicas: list[EngineReplica]) -> None:
    replica = vllm_replicas[0]
    plan = plan_fit(
        FitRequest(context=MAX_MODEL_LEN),
        CpuTarget(kv_cache_space_gib=KV_CACHE_SPACE_GIB),
        load_model(str(replica.model_dir)),
    )
    labels = cache_config_labels(replica.metrics_text())
    block = int(labels["block_size"])
    reported = int(labels.get("kv_cache_size_tokens") or int(labels["num_gpu_blocks"]) * block)
    assert abs(plan.kv_tokens - reported) < block, (plan.kv_tokens, reported)
    served = httpx.get(f"{replica.base_url}/v1/models", timeout=10.0).json()["data"][0]
    assert served["max_model_len"] == MAX_MODEL_LEN


def test_killed_replica_restarts_on_the_same_port(vllm_replicas: list[EngineReplica]) -> None:
    replica = vllm_replicas[1]
    replica.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{replica.base_url}/health", timeout=2.0)
    replica.start()
    replica.wait_ready()
    assert httpx.get(f"{replica.base_url}/health", timeout=5.0).status_code == 200


def test_tiny_model_is_built_once_with_a_chat_template(tiny_model_dir: Path) -> None:
    weights = next(tiny_model_dir.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before  # idempotent: nothing rewritten
    config = json.loads((tiny_model_dir / "config.json").read_text())
    # The CPU attention kernels need 64 (docs/cpu-engine.md#the-tiny-model).
    assert config["head_dim"] == 64
    spec = load_model(str(tiny_model_dir))
    assert spec.kv_bytes_per_token() == 2 * 2 * 1 * 64 * 2
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    assert "add_generation_prompt" in template
