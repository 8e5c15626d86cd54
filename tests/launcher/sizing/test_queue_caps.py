"""vLLM's admission caps sized from a time-to-first-token target, and a target no queue meets
refused (docs/vllm-server.md#admission-caps)."""

from __future__ import annotations

import doctest

import pytest

import launcher.sizing.queue_caps as queue_caps_module
from launcher.errors import InvalidInput
from launcher.sizing.fit import CpuTarget, FitRequest, check_plan_ttft, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from launcher.sizing.queue_caps import (
    DEFAULT_TTFT_TARGET_S,
    TtftTargetUnreachable,
    size_queue_caps,
)
from launcher.supervision.launch_spec import LaunchSettings, options_for, plan_vllm_argv
from launcher.supervision.vllm_args import build_vllm_argv
from vkit.cli import main

AWQ_4090 = FitRequest(quant="awq", concurrency=16)


def test_module_examples() -> None:
    assert doctest.testmod(queue_caps_module).failed == 0


def test_the_backlog_is_what_prefill_clears_in_the_target_less_one_step() -> None:
    caps = size_queue_caps(
        prompt_tokens=1000, prefill_s=0.25, step_s=0.5, max_num_seqs=8, ttft_target_s=3.0
    )
    assert caps is not None
    assert caps.max_num_queued_tokens == 4000 * 2.5  # 4,000 prefill tok/s x (3 - 0.5) s
    assert caps.max_num_queued_reqs == 8 + 10  # the running batch + 10 prompts of backlog


def test_a_target_one_prompt_and_one_step_exceed_has_no_caps() -> None:
    assert (
        size_queue_caps(
            prompt_tokens=1000, prefill_s=0.6, step_s=0.5, max_num_seqs=8, ttft_target_s=1.0
        )
        is None
    )


def test_the_plan_sizes_the_caps_from_the_speed_model() -> None:
    plan = plan_fit(AWQ_4090, get_gpu("rtx4090"), load_model("llama-3.1-8b"))
    assert plan.ttft_target_s == DEFAULT_TTFT_TARGET_S
    assert plan.prefill_s is not None and plan.step_s is not None
    rate = plan.prompt_tokens / plan.prefill_s
    assert plan.max_num_queued_tokens == int(rate * (DEFAULT_TTFT_TARGET_S - plan.step_s))
    assert plan.max_num_queued_reqs == (
        plan.max_num_seqs + plan.max_num_queued_tokens // plan.prompt_tokens
    )


def test_a_longer_target_admits_a_longer_backlog() -> None:
    gpu, spec = get_gpu("rtx4090"), load_model("llama-3.1-8b")
    short = plan_fit(AWQ_4090.model_copy(update={"ttft_target_s": 1.0}), gpu, spec)
    long = plan_fit(AWQ_4090.model_copy(update={"ttft_target_s": 4.0}), gpu, spec)
    assert short.max_num_queued_tokens is not None and long.max_num_queued_tokens is not None
    assert long.max_num_queued_tokens > 3 * short.max_num_queued_tokens
    assert long.max_num_queued_reqs is not None and short.max_num_queued_reqs is not None
    assert long.max_num_queued_reqs > short.max_num_queued_reqs


def test_a_target_the_gpu_cannot_meet_is_refused_in_one_line() -> None:
    request = AWQ_4090.model_copy(update={"ttft_target_s": 0.05})
    plan = plan_fit(request, get_gpu("rtx4090"), load_model("llama-3.1-8b"))
    assert plan.max_num_queued_tokens is None  # the planner's searches go on without caps
    with pytest.raises(TtftTargetUnreachable) as refused:
        check_plan_ttft(plan)
    assert isinstance(refused.value, InvalidInput)  # exit 2 through vkit.exit_codes
    message = str(refused.value)
    assert "\n" not in message and "0.05 s" in message and "rtx4090" in message


def test_vkit_plan_refuses_it_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--model", "llama-3.1-8b", "--gpu", "rtx4090", "--quant", "awq"]
    assert main([*args, "--prompt-tokens", "20000", "--ttft-target", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time-to-first-token target of 1 s" in err


def test_the_caps_and_the_priority_policy_reach_vllms_command_line() -> None:
    settings = LaunchSettings(model="llama-3.1-8b", gpu="rtx4090", quant="awq", ttft_target=1.5)
    plan = plan_fit(
        AWQ_4090.model_copy(update={"ttft_target_s": 1.5}),
        get_gpu("rtx4090"),
        load_model("llama-3.1-8b"),
    )
    argv = plan_vllm_argv(settings, plan, engine=[])
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    assert flags["--max-num-queued-tokens"] == str(plan.max_num_queued_tokens)
    assert flags["--max-num-queued-reqs"] == str(plan.max_num_queued_reqs)
    assert argv[argv.index("--scheduling-policy") + 1] == "priority"


def test_on_cpu_no_caps_are_sized_but_the_policy_is_set() -> None:
    plan = plan_fit(FitRequest(context=256), CpuTarget(), load_model("tiny-llama"))
    assert plan.max_num_queued_tokens is None and plan.max_num_queued_reqs is None
    settings = LaunchSettings(model="tiny-llama", cpu=True, max_model_len=256)
    argv = build_vllm_argv(options_for(settings, plan, cpu=True), engine=[])
    assert "--max-num-queued-tokens" not in argv and "--max-num-queued-reqs" not in argv
    assert argv[argv.index("--scheduling-policy") + 1] == "priority"


def test_the_users_own_policy_wins() -> None:
    settings = LaunchSettings(model="m", extra_args=("--scheduling-policy", "fcfs"))
    argv = build_vllm_argv(options_for(settings, None, cpu=True), engine=[])
    assert argv.count("--scheduling-policy") == 1
    assert argv[argv.index("--scheduling-policy") + 1] == "fcfs"
