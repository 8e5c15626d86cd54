"""``vkit plan``: will the model fit, with which settings, and the exact vLLM command."""

from __future__ import annotations

import argparse
import json
from typing import Any

from launcher.sizing.fit import CpuTarget
from launcher.sizing.fit_report import command_line, plan_json, render_plan_text
from launcher.sizing.gpus import load_gpus
from launcher.sizing.models import load_model
from launcher.supervision.launch_spec import (
    LaunchSettings,
    choose_target,
    engine_env,
    options_for,
    solve,
)
from launcher.supervision.tiny_model import TINY_MODEL_NAME
from launcher.supervision.vllm_args import API_SERVER_MODULE, build_vllm_argv
from vkit.exit_codes import UsageError

QUANTS = ["bf16", "fp16", "fp8", "int8", "awq", "gptq"]
# The printed command names a plain `python`: the one that has vLLM installed.
PRINTED_ENGINE = ["python", "-m", API_SERVER_MODULE]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``vkit plan`` and ``vkit launch``."""
    parser.add_argument("--model", help="snapshot name (llama-3.1-8b, 8b, ...) or model dir")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--gpu", help=f"GPU profile: {', '.join(sorted(load_gpus()))}")
    target.add_argument(
        "--cpu",
        action="store_true",
        default=None,
        help="the CPU engine (KV budget: VLLM_CPU_KVCACHE_SPACE GiB)",
    )
    parser.add_argument("--quant", choices=QUANTS, help="weight quantization (default bf16)")
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], help="KV cache dtype")
    parser.add_argument("--tensor-parallel-size", "--tp", dest="tensor_parallel", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--concurrency", type=int, help="target concurrent requests")
    parser.add_argument("--host", help="address vLLM binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port vLLM binds (default 8000)")
    parser.add_argument("--served-model-name", help="model name clients send")


def settings_fields(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The given (non-None) flags among ``names``, for a pydantic model."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


_FIELDS = [
    "model",
    "gpu",
    "cpu",
    "quant",
    "kv_cache_dtype",
    "tensor_parallel",
    "gpu_memory_utilization",
    "concurrency",
    "host",
    "port",
    "served_model_name",
    "kv_cache_space_gib",
]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="fit a model on a GPU: memory, max_model_len, speed, the vLLM command",
        description="Solve the memory fit of a model on a GPU (or this CPU) and print the "
        "tuned vLLM command. Exit 0 when it fits, 1 when it does not.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--context",
        type=int,
        dest="max_model_len",
        help="target context length instead of a concurrency",
    )
    parser.add_argument(
        "--kv-cache-space",
        type=int,
        dest="kv_cache_space_gib",
        help="CPU: KV cache GiB (VLLM_CPU_KVCACHE_SPACE, default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    fields = settings_fields(args, [*_FIELDS, "max_model_len"])
    if "model" not in fields:
        raise UsageError("--model is required (a snapshot name such as llama-3.1-8b, or a dir)")
    if "max_model_len" in fields and "concurrency" in fields:
        raise UsageError("give --context or --concurrency, not both")
    settings = LaunchSettings(**fields)
    target = choose_target(settings, gpu_visible=True)
    if target is None:
        raise UsageError(f"give --gpu NAME ({', '.join(sorted(load_gpus()))}) or --cpu")
    spec = load_model(settings.model)
    plan = solve(settings, target, spec)
    cpu = isinstance(target, CpuTarget)
    argv = env = None
    if plan.fits:
        argv = build_vllm_argv(options_for(settings, plan, cpu=cpu), engine=PRINTED_ENGINE)
        env = engine_env(settings, cpu=cpu)
    if settings.model == TINY_MODEL_NAME:
        argv = None  # built locally on first launch: `vkit launch --profile tiny-cpu`
    if args.json:
        print(json.dumps(plan_json(plan, argv, env or {}), indent=2))
    else:
        print(render_plan_text(plan, command_line(argv, env or {}) if argv else None))
    return 0 if plan.fits else 1
