"""``launcher.supervision.launch_spec``: settings -> tuned options, argv and env (no processes)."""

from __future__ import annotations

import pytest

from launcher.errors import LaunchError
from launcher.sizing.fit import CpuTarget
from launcher.sizing.models import snapshot_candidates, vllm_model_argument
from launcher.supervision.launch_spec import (
    LaunchSettings,
    choose_target,
    loaded_checkpoint,
    resolve_launch,
)
from launcher.supervision.profiles import load_profile, merge_extra_args

ENGINE = ["vllm-server"]


def test_gpu_launch_is_tuned_by_the_solver() -> None:
    spec = resolve_launch(
        LaunchSettings(model="8b", gpu="rtx4090", quant="awq", concurrency=16),
        gpu_visible=True,
        engine=ENGINE,
    )
    assert spec.plan is not None and spec.plan.fits
    assert spec.options.max_model_len == spec.plan.max_model_len
    # --quant awq of a snapshot runs the catalog's AWQ checkpoint, not the bf16 one.
    assert spec.argv[:3] == [
        "vllm-server",
        "--model",
        "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    ]
    assert spec.env == {}


def test_cpu_is_the_default_without_a_gpu() -> None:
    settings = LaunchSettings(model="qwen3-4b", max_model_len=512, kv_cache_space_gib=2)
    assert isinstance(choose_target(settings, gpu_visible=False), CpuTarget)
    spec = resolve_launch(settings, gpu_visible=False, engine=ENGINE)
    assert spec.cpu
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert spec.env["PYTHONPATH"].endswith("amx_site")  # tests/launcher/supervision/test_amx.py
    assert "--gpu-memory-utilization" not in spec.argv


def test_detected_gpu_name_selects_its_profile() -> None:
    settings = LaunchSettings(model="8b")
    target = choose_target(settings, gpu_visible=True, detected_gpu="NVIDIA H200")
    assert getattr(target, "key", None) == "h200"
    assert choose_target(settings, gpu_visible=True, detected_gpu="Tesla T4") is None


def test_unknown_repository_is_launched_untuned() -> None:
    spec = resolve_launch(
        LaunchSettings(model="someone/unknown-model", gpu="l4", max_model_len=1024),
        gpu_visible=True,
        engine=ENGINE,
    )
    assert spec.plan is None
    assert spec.notes
    assert spec.argv[spec.argv.index("--max-model-len") + 1] == "1024"


def test_plan_that_does_not_fit_is_a_launch_error() -> None:
    with pytest.raises(LaunchError, match="Ways out"):
        resolve_launch(LaunchSettings(model="70b", gpu="l4"), gpu_visible=True)


def test_shutdown_timeout_rounds_up_to_whole_seconds() -> None:
    assert LaunchSettings(model="m", shutdown_timeout=2.5).shutdown_timeout == 3
    assert LaunchSettings(model="m", shutdown_timeout="30").shutdown_timeout == 30


def test_model_names_and_repository_ids() -> None:
    assert "llama-3.1-8b" in snapshot_candidates(
        "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
    )
    assert vllm_model_argument("13b") == "meta-llama/Llama-2-13b-chat-hf"
    assert vllm_model_argument("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_profiles_load_and_extras_merge() -> None:
    tiny = LaunchSettings(**load_profile("tiny-cpu"))
    assert tiny.cpu and tiny.max_model_len == 256 and tiny.enforce_eager
    gpu = LaunchSettings(**load_profile("llama-3.1-8b-rtx4090"))
    assert gpu.quant == "awq" and gpu.gpu == "rtx4090"
    merged = merge_extra_args(("--seed", "1", "--dtype", "half"), ("--seed", "2"))
    assert merged == ("--dtype", "half", "--seed", "2")


def test_the_pre_quantized_rule_lives_in_loaded_checkpoint() -> None:
    """A pre-quantized catalog checkpoint gets no online quantization; a 16-bit one gets FP8
    at load; a repository id is loaded as given."""
    repo, quant = loaded_checkpoint("llama-3.1-70b", "fp8")
    assert (repo, quant) == ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "bf16")
    assert loaded_checkpoint("qwen2.5-14b", "fp8") == ("Qwen/Qwen2.5-14B-Instruct", "fp8")
    assert loaded_checkpoint("some/repo", "fp8") == ("some/repo", "fp8")
