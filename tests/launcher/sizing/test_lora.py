"""LoRA: vLLM's rank set, the adapter checks, the slots' bytes and where they come from."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from launcher.sizing.fit import CpuTarget, FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.lora import (
    RUNTIME_LORA_VAR,
    LoraAdapter,
    LoraSettings,
    lora_bytes,
    lora_env,
    lora_flags,
)
from launcher.sizing.models import load_model
from launcher.supervision.launch_spec import LaunchSettings, engine_env, plan_vllm_argv
from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv


def adapter(name: str = "sql", rank: int = 8, source: str = "org/sql-lora") -> LoraAdapter:
    return LoraAdapter(name=name, source=source, rank=rank)


def test_the_rank_is_the_smallest_vllm_accepts_above_every_adapter() -> None:
    assert LoraSettings(adapters=(adapter(rank=8),)).rank == 8
    assert LoraSettings(adapters=(adapter(rank=9), adapter("b", rank=4))).rank == 16
    assert LoraSettings(adapters=(adapter(rank=300),)).rank == 320
    assert LoraSettings().rank == 1


def test_a_rank_vllm_refuses_is_refused_here() -> None:
    with pytest.raises(ValidationError, match=r"max_rank 24 is not one vLLM accepts"):
        LoraSettings(max_rank=24)


def test_an_adapter_above_the_max_rank_is_one_clear_error() -> None:
    with pytest.raises(ValidationError, match=r"adapter 'sql' has rank 32, above max_rank 16"):
        LoraSettings(adapters=(adapter(rank=32),), max_rank=16)


def test_two_adapters_of_one_name_and_too_few_cpu_slots_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"adapter 'sql' is named twice"):
        LoraSettings(adapters=(adapter(), adapter(rank=4)))
    with pytest.raises(ValidationError, match=r"max_cpu_loras \(1\) is below max_loras \(2\)"):
        LoraSettings(max_loras=2, max_cpu_loras=1)


def test_llama_8b_rank_16_slot_holds_a_peft_adapter_of_all_seven_projections() -> None:
    # A PEFT rank-16 LoRA of Llama-3.1-8B on q,k,v,o,gate,up,down: r x (in + out) per
    # projection, 32 layers = 41,943,040 parameters = 83,886,080 bytes of bf16. vLLM's slot
    # holds the same matrices (q/k/v's A once per slice), plus the lm_head's.
    spec = load_model("llama-3.1-8b")
    lora = LoraSettings(max_rank=16)
    lm_head = 16 * (spec.hidden_size + spec.vocab_size) * 2
    assert lora_bytes(spec, lora) - lm_head == 83_886_080
    assert lora_bytes(spec, lora.model_copy(update={"max_loras": 4})) == 4 * lora_bytes(spec, lora)


def test_tensor_parallel_splits_the_sharded_side_only() -> None:
    spec = load_model("llama-3.1-8b")
    lora = LoraSettings(max_rank=16)
    one, two = lora_bytes(spec, lora), lora_bytes(spec, lora, tensor_parallel=2)
    assert one / 2 < two < one


def test_adapter_slots_come_out_of_the_kv_cache_on_a_gpu() -> None:
    spec, gpu = load_model("llama-3.1-8b"), get_gpu("rtx4090")
    bare = plan_fit(FitRequest(quant="awq"), gpu, spec)
    lora = LoraSettings(max_rank=64, max_loras=4)
    with_lora = plan_fit(FitRequest(quant="awq", lora=lora), gpu, spec)
    assert with_lora.lora_gib == round(lora_bytes(spec, lora) / 2**30, 2) > 1
    assert with_lora.kv_gib == pytest.approx(bare.kv_gib - with_lora.lora_gib, abs=0.011)
    assert with_lora.kv_tokens < bare.kv_tokens


def test_on_the_cpu_the_kv_space_is_untouched() -> None:
    spec = load_model("llama-3.1-8b")
    lora = LoraSettings(max_rank=64, max_loras=4)
    plan = plan_fit(FitRequest(lora=lora, context=256), CpuTarget(kv_cache_space_gib=1), spec)
    assert plan.kv_gib == 1.0 and plan.lora_gib == 0.0


def test_the_flags_are_the_ones_vllms_parser_takes() -> None:
    lora = LoraSettings(
        adapters=(adapter(), adapter("b", rank=4, source="/srv/a,b")), max_loras=2, max_cpu_loras=4
    )
    assert lora_flags(lora) == [
        "--enable-lora",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "8",
        "--max-cpu-loras",
        "4",
        "--lora-modules",
        "sql=org/sql-lora",
        '{"name": "b", "path": "/srv/a,b"}',
    ]


def test_the_vllm_command_carries_lora_and_a_pass_through_flag_still_wins() -> None:
    lora = LoraSettings(adapters=(adapter(),))
    argv = build_vllm_argv(
        VllmOptions(model="m", lora=lora, extra_args=("--max-loras", "3")), engine=[]
    )
    assert argv[argv.index("--enable-lora") :] == [
        "--enable-lora",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        "sql=org/sql-lora",
        "--max-loras",
        "3",
    ]
    launched = plan_vllm_argv(LaunchSettings(model="m", lora=lora), None, engine=[])
    assert "--enable-lora" in launched


def test_runtime_updates_set_vllms_switch_in_the_engine_environment() -> None:
    allowed = LoraSettings(runtime_updates=True)
    assert lora_env(allowed) == {RUNTIME_LORA_VAR: "True"}
    assert lora_env(LoraSettings()) == {} == lora_env(None)
    env = engine_env(LaunchSettings(model="m", lora=allowed), cpu=True)
    assert env[RUNTIME_LORA_VAR] == "True" and "VLLM_CPU_KVCACHE_SPACE" in env
    assert engine_env(LaunchSettings(model="m", lora=allowed), cpu=False) == {
        RUNTIME_LORA_VAR: "True"
    }


def test_lora_module_example() -> None:
    import doctest

    import launcher.sizing.lora as module

    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
