"""``vkit plan``: will the model fit, with which settings, and the exact vLLM command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from launcher.errors import NoCheckpointError
from launcher.sizing.capacity.costs import PricedGpu, default_priced_gpus, over_pcie
from launcher.sizing.capacity.search import best_configuration, parse_allowed
from launcher.sizing.checkpoints import Checkpoint, served_checkpoint
from launcher.sizing.fit import CpuTarget
from launcher.sizing.fit_report import (
    command_line,
    describe_checkpoint,
    plan_json,
    render_plan_text,
)
from launcher.sizing.gpus import GpuProfile, get_gpu, load_gpus, without_nvlink
from launcher.sizing.models import ModelSpec, load_model
from launcher.supervision.launch_spec import (
    LaunchSettings,
    choose_target,
    engine_env,
    options_for,
    solve,
)
from launcher.supervision.tiny_model import TINY_MODEL_NAME
from launcher.supervision.vllm_args import API_SERVER_MODULE, build_vllm_argv
from vkit.commands.plan_groups import run_plan_groups
from vkit.exit_codes import CliError, UsageError

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
    parser.add_argument(
        "--ttft-target",
        type=float,
        dest="ttft_target",
        help="time-to-first-token target in seconds: sizes vLLM's admission caps (2)",
    )


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
    "ttft_target",
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
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="no CUDA graphs: the command says so and the speed pays ~0.25 ms a layer a step",
    )
    parser.add_argument(
        "--no-nvlink",
        action="store_true",
        help="the replica's GPUs talk over PCIe only (a PCIe board of an SXM kind, a cloud "
        "instance without NVLink): the speed pays PCIe's all-reduce under --tensor-parallel",
    )
    parser.add_argument(
        "--prompt-tokens", type=int, default=500, help="prompt tokens per request (500)"
    )
    parser.add_argument(
        "--output-tokens", type=int, default=200, help="output tokens per request (200)"
    )
    best = parser.add_argument_group("the best option (--best)")
    best.add_argument(
        "--best",
        action="store_true",
        help="search GPU (or --gpu) x quantization x tensor parallel for the cheapest "
        "configuration serving --concurrency users at --tok-s each",
    )
    best.add_argument("--tok-s", type=float, default=40.0, help="per-user tok/s target (40)")
    best.add_argument(
        "--allow-quant", help="quantizations the search may use besides --quant: fp8,int8,int4"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--deployment",
        type=Path,
        help="size and price every group of a deployment file instead of one --model",
    )
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    fields = settings_fields(args, [*_FIELDS, "max_model_len", "enforce_eager"])
    if args.deployment is not None:
        if fields or args.best:
            given = ", ".join(f"--{name.replace('_', '-')}" for name in fields) or "--best"
            raise UsageError(f"--deployment states every group: drop {given}")
        return run_plan_groups(args)
    if "model" not in fields:
        raise UsageError("--model is required (a snapshot name such as llama-3.1-8b, or a dir)")
    if "max_model_len" in fields and "concurrency" in fields:
        raise UsageError("give --context or --concurrency, not both")
    for flag in ("prompt_tokens", "output_tokens", "tok_s"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive")
    settings = LaunchSettings(**fields)
    spec = load_model(settings.model)
    best_line = None
    if args.best:
        settings, best_line = best_settings(settings, spec, args)
    target = choose_target(settings, gpu_visible=True)
    if target is None:
        raise UsageError(f"give --gpu NAME ({', '.join(sorted(load_gpus()))}) or --cpu")
    if args.no_nvlink and isinstance(target, GpuProfile):
        target = without_nvlink(target)
    plan = solve(
        settings,
        target,
        spec,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
    )
    cpu = isinstance(target, CpuTarget)
    argv = env = None
    checkpoint_line, checkpoint = checkpoint_report(settings)
    if plan.fits and (checkpoint is not None or checkpoint_line is None):
        argv = build_vllm_argv(options_for(settings, plan, cpu=cpu), engine=PRINTED_ENGINE)
        env = engine_env(settings, cpu=cpu)
    if settings.model == TINY_MODEL_NAME:
        argv = None  # built locally on first launch: `vkit launch --profile tiny-cpu`
    if args.json:
        data = plan_json(plan, argv, env or {})
        data["checkpoint"] = checkpoint.model_dump() if checkpoint else None
        data["checkpoint_note"] = checkpoint_line
        print(json.dumps(data, indent=2))
    else:
        command = command_line(argv, env or {}) if argv else None
        if best_line is not None:
            print(best_line)
        print(render_plan_text(plan, command, checkpoint_line))
    return 0 if plan.fits else 1


def best_settings(
    settings: LaunchSettings, spec: ModelSpec, args: argparse.Namespace
) -> tuple[LaunchSettings, str]:
    """``--best``: the cheapest GPU x quantization x TP for the concurrency; the settings of
    one replica of it and the line that says what was chosen."""
    if settings.cpu:
        raise UsageError("--best searches GPUs: drop --cpu")
    if settings.gpu is not None:
        gpu = get_gpu(settings.gpu)
        options = [PricedGpu(gpu, gpu.default_price or "", gpu.price_per_hour or 0.0)]
    else:
        options = default_priced_gpus()
    if args.no_nvlink:
        options = over_pcie(options)
    try:
        allowed = parse_allowed(args.allow_quant) if args.allow_quant else ()
    except ValueError as exc:
        raise UsageError(f"--allow-quant: {exc}") from None
    concurrency = settings.concurrency or 1
    best = best_configuration(
        settings.model,
        spec,
        options,
        concurrency=concurrency,
        user_tok_s=args.tok_s,
        quants=tuple(dict.fromkeys((settings.quant, *allowed))),
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
    )
    if best is None:
        raise CliError(
            f"no configuration of {spec.name} serves {concurrency} users at {args.tok_s:g} "
            "tok/s on the GPUs searched; allow more with --allow-quant fp8,int4, or lower --tok-s"
        )
    chosen = settings.model_copy(
        update={
            "gpu": best.option.gpu.key,
            "quant": best.quant,
            "tensor_parallel": best.tensor_parallel,
            "concurrency": min(concurrency, best.users_per_replica),
            "max_model_len": None,
        }
    )
    return chosen, f"best for {concurrency} users at >= {args.tok_s:g} tok/s: {best.describe()}"


def checkpoint_report(settings: LaunchSettings) -> tuple[str | None, Checkpoint | None]:
    """The checkpoint line of the report and the checkpoint; (why none, None) when no known
    checkpoint serves the quantization; (None, None) for the user's own directory or repo."""
    try:
        checkpoint = served_checkpoint(settings.model, settings.quant)
    except NoCheckpointError as exc:
        return f"NONE KNOWN: {exc}; no command printed", None
    if checkpoint is None:
        return None, None
    return describe_checkpoint(checkpoint), checkpoint
