"""The readable ``vkit plan`` report and its JSON twin."""

from __future__ import annotations

import shlex
from typing import Any

from launcher.sizing.checkpoints import Checkpoint
from launcher.sizing.fit import FitPlan
from launcher.sizing.speed_band import SPEED_ERROR_BAND


def command_line(argv: list[str], env: dict[str, str]) -> str:
    """``VAR=value python -m ...`` as one shell line."""
    prefix = [f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    return " ".join([*prefix, shlex.join(argv)])


def _memory_lines(plan: FitPlan) -> list[str]:
    if plan.cpu:
        return [
            f"  memory    KV cache {plan.kv_gib:.2f} GiB of RAM (VLLM_CPU_KVCACHE_SPACE); "
            f"weights {plan.weights_gib:.2f} GiB"
        ]
    lora = f" + LoRA slots {plan.lora_gib:.2f}" if plan.lora_gib else ""
    return [
        f"  memory    {plan.budget_gib:.2f} GiB usable ({plan.gpu_memory_utilization} x "
        f"{plan.vram_gib:.2f} GiB) = weights {plan.weights_gib:.2f} + overhead "
        f"{plan.overhead_gib:.2f}{lora} + KV cache {plan.kv_gib:.2f} GiB"
    ]


def _speed_line(plan: FitPlan) -> list[str]:
    if plan.single_stream_tok_s is None or plan.aggregate_tok_s is None:
        return []
    slow = SPEED_ERROR_BAND.pessimistic_factor
    return [
        f"  speed     ~{plan.single_stream_tok_s:,.0f} tok/s single stream, "
        f"~{plan.aggregate_tok_s:,.0f} tok/s at {plan.aggregate_concurrency} concurrent "
        f"({plan.prompt_tokens}-token prompts, {plan.output_tokens}-token replies)",
        f"  how sure  {SPEED_ERROR_BAND.line()}; at the pessimistic end "
        f"~{plan.single_stream_tok_s / slow:,.0f} and ~{plan.aggregate_tok_s / slow:,.0f} tok/s",
    ]


def describe_checkpoint(checkpoint: Checkpoint) -> str:
    """``hugging-quants/... (awq, 4-bit, group 128)``, or how a 16-bit checkpoint is served."""
    if checkpoint.online:
        return f"{checkpoint.repo} (16-bit; vLLM quantizes it to FP8 at load)"
    if not checkpoint.prequantized:
        return f"{checkpoint.repo} (16-bit)"
    bits = f"{checkpoint.bits}-bit" if checkpoint.bits else ""
    facts = [checkpoint.method, bits, checkpoint.scheme or ""]
    if checkpoint.group_size:
        facts.append(f"group {checkpoint.group_size}")
    unchecked = "" if checkpoint.verified else " (config not checked)"
    return f"{checkpoint.repo} ({', '.join(f for f in facts if f)}){unchecked}"


def render_plan_text(plan: FitPlan, command: str | None, checkpoint_line: str | None = None) -> str:
    """The human report: memory split, settings, speed, verdict and the command line.

    ``checkpoint_line``: the checkpoint served, or why there is no command (none known)."""
    where = "CPU" if plan.cpu else f"{plan.target} ({plan.vram_gib:.2f} GiB)"
    tp = f", TP {plan.tensor_parallel}" if plan.tensor_parallel > 1 else ""
    weights = "fp8 weight-only (FP8 Marlin, W8A16)" if plan.fp8_weight_only else plan.quant
    lines = [f"{plan.model} on {where}: {weights} weights, {plan.kv_dtype} KV cache{tp}"]
    lines += _memory_lines(plan)
    lines.append(
        f"  KV cache  {plan.kv_bytes_per_token / 1024:g} KiB/token -> {plan.kv_tokens:,} tokens "
        f"(blocks of {plan.block_size})"
    )
    lines.append(
        f"  serving   max_model_len {plan.max_model_len:,} (full-length requests at once: "
        f"{plan.concurrency_at_max_len:,}), max_num_seqs {plan.max_num_seqs}"
    )
    lines += _speed_line(plan)
    lines += _admission_line(plan)
    lines.append(f"  verdict   {'FITS' if plan.fits else 'DOES NOT FIT'}")
    lines += [f"    - {problem}" for problem in plan.problems]
    if plan.ways_out:
        lines.append("  ways out")
        lines += [f"    - {way}" for way in plan.ways_out]
    if checkpoint_line is not None:
        lines.append(f"  checkpoint {checkpoint_line}")
    if command is None and plan.fits and plan.model == "tiny-llama":
        lines += ["", "run it: vkit launch --profile tiny-cpu (builds the tiny model first)"]
    if command is not None:
        lines += ["", "vLLM command:", f"  {command}"]
    return "\n".join(lines)


def _admission_line(plan: FitPlan) -> list[str]:
    """vLLM's admission caps for the TTFT target (none on CPU: no prefill rate to size by)."""
    if plan.max_num_queued_tokens is None or plan.prefill_s is None:
        return []
    rate = plan.prompt_tokens / plan.prefill_s
    return [
        f"  admission TTFT target {plan.ttft_target_s:g} s at ~{rate:,.0f} prefill tok/s: "
        f"max_num_queued_tokens {plan.max_num_queued_tokens:,}, "
        f"max_num_queued_reqs {plan.max_num_queued_reqs} (past them vLLM answers 503)"
    ]


def plan_json(plan: FitPlan, argv: list[str] | None, env: dict[str, str]) -> dict[str, Any]:
    """The same as :func:`render_plan_text`, as data."""
    data = plan.model_dump()
    data["command"] = argv
    data["speed_band"] = SPEED_ERROR_BAND.model_dump()
    data["env"] = env
    data["command_line"] = command_line(argv, env) if argv is not None else None
    return data
