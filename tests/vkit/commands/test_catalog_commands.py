"""The 2026 catalog plans: every new model with ``vkit plan`` and ``vkit capacity``, on the new
GPU profiles, with exit codes 0 (fits / planned) or 1 (does not fit), never a usage error."""

from __future__ import annotations

import json

import pytest

from vkit.cli import main

NEW_MODELS = (
    "qwen3-14b",
    "qwen3-32b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "llama-3.3-70b",
    "mistral-small-24b",
    "gemma-3-27b",
)
NEW_GPUS = ("a100-40gb", "h100-nvl", "a10g", "rtx3090", "l4")


@pytest.mark.parametrize("model", NEW_MODELS)
@pytest.mark.parametrize(("gpu", "quant"), [("h100-nvl", "fp8"), ("a100-40gb", "awq")])
def test_plan_answers_for_every_new_model(
    model: str, gpu: str, quant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["plan", "--model", model, "--gpu", gpu, "--quant", quant, "--json"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    plan = json.loads(out)
    assert plan["model"].startswith(model.split("-small")[0]) and plan["weights_gib"] > 5


@pytest.mark.parametrize("model", NEW_MODELS)
def test_capacity_plans_every_new_model_on_the_new_gpus(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["capacity", "--users", "5000", "--model", model, "--gpus", ",".join(NEW_GPUS)]
    args += ["--allow-quant", "fp8,int4", "--tensor-parallel", "1,2,4", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [o["gpu_key"] for o in plan["options"]] == [
        "a100-40gb",
        "h100-nvl",
        "a10",
        "rtx3090",
        "l4",
    ]
    assert any(o["gpus"] for o in plan["options"])  # something serves it
    assert plan["serverless"]["worker"] is not None
