"""``vkit plan --deployment``: each group sized, shared GPUs said, the price counted once per
GPU, and groups that cannot share a GPU one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.sizing.gpus import get_gpu
from vkit.cli import main

TWO_MODELS = Path(__file__).resolve().parents[3] / "deploy" / "deployments" / "two-models.yaml"


def test_each_group_is_sized_and_the_shared_gpu_priced_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--deployment", str(TWO_MODELS)]) == 0
    text = capsys.readouterr().out
    assert "== chat: 1 replica(s) of llama-3.1-8b on GPUs 0; adapters sql (rank 16); " in text
    assert "shares its GPUs with fast (gpu_memory_utilization 0.4" in text
    assert "+ LoRA slots 0.16 +" in text
    price = get_gpu("l40s").price_per_hour
    assert price is not None
    assert text.rstrip().endswith(f"GPUs: ${price:.2f}/hour (${price * 730:,.0f}/month)")


def test_the_json_twin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--deployment", str(TWO_MODELS), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    chat, fast = data["groups"]
    assert (chat["name"], fast["name"]) == ("chat", "fast")
    assert chat["shared_with"] == ["fast"] and chat["plan"]["lora_gib"] > 0
    total = chat["plan"]["gpu_memory_utilization"] + fast["plan"]["gpu_memory_utilization"]
    assert total <= 0.92
    assert data["price_per_hour"] == get_gpu("l40s").price_per_hour


def test_groups_that_cannot_share_a_gpu_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heavy = tmp_path / "heavy.yaml"
    heavy.write_text(
        TWO_MODELS.read_text().replace("gpu: l40s", "gpu: rtx4090").replace("awq", "bf16")
    )
    assert main(["plan", "--deployment", str(heavy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chat and fast cannot share one rtx4090" in err[0]


def test_the_single_model_flags_cannot_be_mixed_in() -> None:
    assert main(["plan", "--deployment", str(TWO_MODELS), "--model", "qwen3-4b"]) == 2
