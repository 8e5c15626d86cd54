"""Issue 23 on real replicas: two models and LoRA adapters behind one aware gateway.

Two vLLM CPU replicas of the tiny model, started by this module (not the session's pair):
``tiny-a`` with LoRA on (``--enable-lora``, a random adapter ``static-lora`` named at start,
run-time loading allowed), and ``tiny-b``. One ``vkit gateway`` (``routing: aware``) lists
both replicas. Each model's requests, and the adapter's, are answered by the replica that
serves them (each replica's own ``vllm:request_success_total`` shows it); an adapter loaded
on ``tiny-a`` at run time (directly, an operator's action) is reached through the gateway
once a probe has seen it; the gateway's public port refuses to load one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.keyfile import save_keys
from gateway.settings_env import settings_from_values
from tests.e2e.clients import wait_for
from tests.e2e.prom import sample_sum
from tests.engine import READY_TIMEOUT_S, EngineReplica
from vkit.stack.demo_key import add_demo_key
from vkit.stack.ports import free_port, pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, gateway_process
from vkit.stack.up_settings import DemoKeyLimits

pytestmark = pytest.mark.engine

LORA_RANK = 8
SUCCESS = "vllm:request_success_total"
NAMES = ("tiny-a", "tiny-b", "static-lora", "runtime-lora")


def build_random_lora(base_dir: Path, dest: Path, rank: int = LORA_RANK) -> Path:
    """A PEFT-format LoRA adapter of random weights for the model in ``base_dir``: ``q_proj``
    and ``v_proj`` of every layer (what vLLM's loader reads: ``adapter_config.json`` and
    ``adapter_model.safetensors``)."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((base_dir / "config.json").read_text())
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    outputs = {
        "q_proj": config["num_attention_heads"] * head_dim,
        "v_proj": config["num_key_value_heads"] * head_dim,
    }
    generator = torch.Generator().manual_seed(23)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, out in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shape_a, shape_b = (rank, hidden), (out, rank)
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(shape_a, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(shape_b, generator=generator) * 0.01
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(outputs),
        "bias": "none",
        "base_model_name_or_path": str(base_dir),
        "fan_in_fan_out": False,
        "modules_to_save": None,
    }
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config))
    return dest


class LoraReplica(EngineReplica):
    """A replica with extra vLLM arguments, run-time adapter loading allowed."""

    def __init__(self, *, extra: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    @property
    def argv(self) -> list[str]:
        runtime = ["env", "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"]
        return [*runtime, *super().argv, "--", *self.extra]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(scope="module")
def two_model_replicas(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, EngineReplica]]:
    logs = tmp_path_factory.mktemp("models-logs")
    lora_flags = [
        "--enable-lora",
        "--max-lora-rank",
        str(LORA_RANK),
        "--max-loras",
        "2",
        "--lora-modules",
        f"static-lora={adapter_dir}",
    ]
    replicas: dict[str, EngineReplica] = {
        "tiny-a": LoraReplica(
            extra=lora_flags,
            model_dir=tiny_model_dir,
            port=free_port(),
            cpu_core=0,
            log_path=logs / "tiny-a.log",
            model="tiny-a",
        ),
        "tiny-b": EngineReplica(
            model_dir=tiny_model_dir,
            port=free_port(),
            cpu_core=1,
            log_path=logs / "tiny-b.log",
            model="tiny-b",
        ),
    }
    try:
        for replica in replicas.values():
            replica.start()
        for replica in replicas.values():
            replica.wait_ready(READY_TIMEOUT_S)
        yield replicas
    finally:
        for replica in replicas.values():
            replica.stop()


@pytest.fixture(scope="module")
def models_gateway(
    two_model_replicas: dict[str, EngineReplica], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """``(gateway URL, admin URL, a key's secret)``: the aware gateway over both replicas."""
    layout = StackLayout(tmp_path_factory.mktemp("models-gateway"))
    layout.logs.mkdir(parents=True, exist_ok=True)
    keys_file = layout.run_dir / "keys.yaml"
    save_keys(keys_file, [])
    limits = DemoKeyLimits(rpm=10_000, tpm=10_000_000, concurrency=16, max_tokens=64)
    secret = add_demo_key(keys_file, "models-e2e", limits, [])  # no list: every name
    port, admin = pick_free_ports(2)
    settings = settings_from_values(
        {
            "upstreams": [r.base_url for r in two_model_replicas.values()],
            "routing": "aware",
            "keys_file": keys_file,
            "admin_port": admin,
            "health": {"interval": 0.5},
            "router": {"scrape_interval": 0.5},
        }
    )
    with ProcessGroup() as group:
        spec = gateway_process(settings, "127.0.0.1", port, layout, sys.executable)
        group.wait_ready([group.start(spec)], 60.0)
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", secret


def listed(gateway: str, secret: str) -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {secret}"}
    answer = httpx.get(f"{gateway}/v1/models", headers=headers, timeout=10)
    answer.raise_for_status()
    return {card["id"]: card for card in answer.json()["data"]}


def complete(gateway: str, secret: str, model: str) -> httpx.Response:
    body = {
        "model": model,
        "prompt": "Tell me about the weather today in a few words",
        "max_tokens": 4,
    }
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.post(f"{gateway}/v1/completions", json=body, headers=headers, timeout=60)


def successes(replicas: dict[str, EngineReplica]) -> dict[str, float]:
    return {name: sample_sum(r.metrics_text(), SUCCESS) for name, r in replicas.items()}


def test_each_name_is_answered_by_the_replica_that_serves_it(
    two_model_replicas: dict[str, EngineReplica],
    models_gateway: tuple[str, str, str],
    adapter_dir: Path,
) -> None:
    gateway, admin, secret = models_gateway
    wait_for(
        lambda: {"tiny-a", "tiny-b", "static-lora"} <= set(listed(gateway, secret)),
        30,
        "the gateway to list both models and the static adapter",
    )
    cards = listed(gateway, secret)
    assert cards["static-lora"]["parent"] == "tiny-a"

    before = successes(two_model_replicas)
    for model, count in (("tiny-a", 3), ("tiny-b", 4), ("static-lora", 2)):
        for _ in range(count):
            answer = complete(gateway, secret, model)
            assert answer.status_code == 200, answer.text
    after = successes(two_model_replicas)
    assert after["tiny-a"] - before["tiny-a"] == 5  # its model and its adapter
    assert after["tiny-b"] - before["tiny-b"] == 4

    # An adapter loaded at run time, on the replica itself: reached through the gateway.
    refused = httpx.post(
        f"{gateway}/v1/load_lora_adapter",
        json={"lora_name": "runtime-lora", "lora_path": str(adapter_dir)},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert refused.status_code == 404  # never through the public port
    assert complete(gateway, secret, "runtime-lora").status_code == 404
    replica_a = two_model_replicas["tiny-a"]
    loaded = httpx.post(
        f"{replica_a.base_url}/v1/load_lora_adapter",
        json={"lora_name": "runtime-lora", "lora_path": str(adapter_dir)},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    wait_for(lambda: "runtime-lora" in listed(gateway, secret), 10, "the next probe")
    before = successes(two_model_replicas)
    answer = complete(gateway, secret, "runtime-lora")
    assert answer.status_code == 200, answer.text
    after = successes(two_model_replicas)
    assert (after["tiny-a"] - before["tiny-a"], after["tiny-b"] - before["tiny-b"]) == (1, 0)

    metrics = httpx.get(f"{admin}/metrics", timeout=10).text
    name = "vkit_gateway_requests_total"
    counted = {m: sample_sum(metrics, name, model=m, status="200") for m in NAMES}
    assert counted == {"tiny-a": 3, "tiny-b": 4, "static-lora": 2, "runtime-lora": 1}
    # Before it was loaded no upstream served it: that 404 is counted under "other".
    assert sample_sum(metrics, name, model="other", status="404") == 1
