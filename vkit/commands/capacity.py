"""``vkit capacity``: daily users -> GPUs, $/month, $/user, serverless, recommendation, chart.

    vkit capacity --users 10000
    vkit capacity --users 100000 --model 70b --quant fp8 --gpus h100,h200 --redundancy 1 --json
    vkit capacity --users 1000 --csv --plot cost.png
    vkit capacity --users 5000 --model 8b --enforce-eager
    vkit capacity --users 100000 --schedule --weekend-share 0 --allow-zero   (capacity_schedule)

The Namespace stops in :func:`run`: it becomes a :class:`CapacityRequest` (a validation error
names the flag, exit 2), the planner runs, and the plan is printed as a table, JSON or CSV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from launcher.sizing.capacity.capacity_plan import CapacityPlan, plan_capacity
from launcher.sizing.capacity.capacity_report import render_csv, render_json, render_table
from launcher.sizing.capacity.costs import (
    PricedGpu,
    default_priced_gpus,
    over_pcie,
    parse_priced_gpu,
)
from launcher.sizing.capacity.measured import assess, render_measured
from launcher.sizing.capacity.options import CapacityRequest
from launcher.sizing.capacity.prometheus_window import parse_window, read_window
from launcher.sizing.capacity.search import parse_allowed
from launcher.sizing.capacity.serverless import DEFAULT_PROVIDER
from launcher.sizing.capacity.usage import UsageProfile
from vkit.commands.capacity_schedule import add_schedule_flags, run_schedule
from vkit.exit_codes import CliError, UsageError

# Request/usage field -> the flag that sets it, for one-line validation errors.
FLAGS: dict[str, str] = {
    "daily_users": "--users",
    "requests_per_user": "--requests-per-user",
    "tokens_per_request": "--output-tokens",
    "prompt_tokens": "--prompt-tokens",
    "peak_share": "--peak-share",
    "peak_hours": "--peak-hours",
    "user_tok_s": "--tok-s",
    "model": "--model",
    "quant": "--quant",
    "spares": "--redundancy",
    "allow_quant": "--allow-quant",
    "tensor_parallel": "--tensor-parallel",
    "context": "--context",
    "serverless": "--serverless",
    "serverless_usd_per_gpu_second": "--serverless-rate",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "capacity",
        help="GPUs and dollars for a number of daily users; when serverless is cheaper",
        description="Plan GPUs and monthly cost from daily active users (the cost guide's "
        "usage model), compare with serverless, and recommend one.",
    )
    usage = parser.add_argument_group("traffic (defaults: the cost guide's)")
    usage.add_argument(
        "--users", "--dau", type=int, required=True, metavar="N", help="daily active users"
    )
    usage.add_argument(
        "--requests-per-user", type=float, default=3.0, metavar="N", help="a day (3)"
    )
    usage.add_argument(
        "--output-tokens",
        "--tokens-per-request",
        dest="tokens_per_request",
        type=int,
        default=200,
        metavar="N",
        help="output tokens per request (the guide's 200)",
    )
    usage.add_argument(
        "--prompt-tokens",
        type=int,
        default=500,
        metavar="N",
        help="prompt tokens per request: system prompt + history + question (500)",
    )
    usage.add_argument(
        "--peak-share", type=float, default=0.7, metavar="F", help="share in the peak (0.7)"
    )
    usage.add_argument(
        "--peak-hours", type=float, default=8.0, metavar="H", help="peak window, hours (8)"
    )
    usage.add_argument(
        "--tok-s", type=float, default=40.0, metavar="TOK_S", help="per-user tok/s target (40)"
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument(
        "--model", default="7b", metavar="NAME", help="name, alias (7b/13b/70b) or directory"
    )
    serving.add_argument(
        "--quant",
        default="fp16",
        metavar="Q",
        help="baseline precision: bf16, fp16, fp8, int8, awq, gptq (fp16, as the guide)",
    )
    serving.add_argument(
        "--allow-quant",
        metavar="LIST",
        help="quantizations the search may also use: fp8,int8,int4 (int4 = awq or gptq); "
        "default none, so the quality stays the baseline's",
    )
    serving.add_argument(
        "--tensor-parallel",
        "--tp",
        default="1,2,4,8",
        metavar="LIST",
        help="replica sizes to try, GPUs in one node (1,2,4,8)",
    )
    serving.add_argument(
        "--context", type=int, metavar="N", help="max_model_len the service must offer"
    )
    serving.add_argument(
        "--from-prometheus",
        metavar="URL",
        help="measure a running deployment instead (its Prometheus); forecast for --users",
    )
    serving.add_argument(
        "--window",
        default="1h",
        metavar="DURATION",
        help="--from-prometheus: the last window to read (1h)",
    )
    serving.add_argument(
        "--no-nvlink",
        action="store_true",
        help="the GPUs of a replica talk over PCIe only (PCIe boards of an SXM kind, cloud "
        "instances without NVLink): tensor parallel pays PCIe's all-reduce",
    )
    serving.add_argument(
        "--enforce-eager",
        action="store_true",
        help="replicas run vLLM without CUDA graphs: every step pays ~0.25 ms a layer, so a "
        "replica carries fewer users at the same speed",
    )
    serving.add_argument("--redundancy", type=int, default=0, metavar="N", help="spare GPUs")
    serving.add_argument(
        "--gpus",
        metavar="LIST",
        help="comma-separated GPU[@PROVIDER][=USD_PER_HOUR] (default: every priced GPU)",
    )
    serving.add_argument(
        "--serverless",
        default=DEFAULT_PROVIDER,
        metavar="PROVIDER",
        help="serverless provider to compare with, priced per GPU class "
        "(configs/serverless.yaml: runpod, or cost-guide for the guide's flat rate; "
        "default %(default)s)",
    )
    serving.add_argument(
        "--serverless-rate",
        type=float,
        default=None,
        metavar="USD",
        help="serverless $ per GPU-second for every class (default: the provider's prices)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON")
    output.add_argument("--csv", action="store_true", help="print the options as CSV")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw cost against DAU")
    add_schedule_flags(parser)
    parser.set_defaults(handler=run)


def build_request(args: argparse.Namespace) -> CapacityRequest:
    """The typed request; a bad value is a :class:`UsageError` naming its flag."""
    try:
        usage = UsageProfile(
            daily_users=args.users,
            requests_per_user=args.requests_per_user,
            tokens_per_request=args.tokens_per_request,
            prompt_tokens=args.prompt_tokens,
            peak_share=args.peak_share,
            peak_hours=args.peak_hours,
            user_tok_s=args.tok_s,
        )
        return CapacityRequest.model_validate(
            {
                "usage": usage,
                "model": args.model,
                "quant": args.quant,
                "allow_quant": parse_allow_quant(args.allow_quant),
                "tensor_parallel": parse_sizes(args.tensor_parallel),
                "context": args.context,
                "eager": args.enforce_eager,
                "spares": args.redundancy,
                "serverless": args.serverless,
                "serverless_usd_per_gpu_second": args.serverless_rate,
            }
        )
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_allow_quant(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    try:
        return parse_allowed(text)
    except ValueError as exc:
        raise ValueError(f"--allow-quant: {exc}") from None


def parse_sizes(text: str) -> tuple[int, ...]:
    """``1,2,4`` -> (1, 2, 4); the model validates the sizes themselves."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--tensor-parallel: expected sizes like 1,2,4,8, got {text!r}") from None
    bad = [size for size in sizes if size not in (1, 2, 4, 8)]
    if bad or not sizes:
        raise ValueError(
            f"--tensor-parallel: {bad[0] if bad else text!r} is not a size vLLM runs within "
            "one node; use 1, 2, 4 or 8 (more GPUs: more replicas)"
        )
    return sizes


def describe_validation_error(exc: ValidationError) -> str:
    """``--peak-share: Input should be less than or equal to 1`` (one line)."""
    parts = []
    for error in exc.errors():
        names = [str(part) for part in error.get("loc", ())]
        field = next(
            (name for name in reversed(names) if name in FLAGS), names[-1] if names else ""
        )
        parts.append(f"{FLAGS.get(field, field)}: {error['msg']}")
    return "; ".join(parts)


def parse_gpu_list(text: str | None) -> list[PricedGpu] | None:
    if text is None:
        return None
    specs = [spec.strip() for spec in text.split(",") if spec.strip()]
    if not specs:
        raise UsageError("--gpus: give at least one GPU, e.g. --gpus rtx4090,h100")
    return [parse_priced_gpu(spec) for spec in specs]


def run(args: argparse.Namespace) -> int:
    if args.from_prometheus:
        return run_measured(args)
    request = build_request(args)
    draw = chart_drawer() if args.plot is not None else None
    options = parse_gpu_list(args.gpus)
    if args.no_nvlink:
        options = over_pcie(options if options is not None else default_priced_gpus())
    plan = plan_capacity(request, options=options)
    impossible = [o for o in plan.options if o.limited_by == "unsupported"]
    if args.gpus and impossible and len(impossible) == len(plan.options):
        raise UsageError(impossible[0].note)  # e.g. --quant fp8 on Ampere only
    if fits_nowhere(plan):
        raise UsageError(plan.recommendation.reason)
    if args.schedule:
        return run_schedule(args, plan)
    render = render_json if args.json else render_csv if args.csv else render_table
    sys.stdout.write(render(plan))
    if draw is not None:
        draw(plan, args.plot)
        print(f"chart written to {args.plot}", file=sys.stderr)
    return 0


def fits_nowhere(plan: CapacityPlan) -> bool:
    """The model runs on none of the GPUs considered (in any configuration searched) and on
    no serverless worker: there is no plan to print, only why."""
    return plan.recommendation.choice == "none" and all(
        o.limited_by in ("does-not-fit", "unsupported") for o in plan.options
    )


def chart_drawer() -> Callable[[CapacityPlan, Path], Path]:
    """The chart function; matplotlib is the optional extra ``vkit[plot]`` and loads only here."""
    try:
        from launcher.sizing.capacity.cost_chart import draw_cost_chart
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "matplotlib":
            raise
        raise CliError("--plot needs matplotlib: pip install 'vkit[plot]'") from None
    return draw_cost_chart


def run_measured(args: argparse.Namespace) -> int:
    """``--from-prometheus URL``: the deployment's last window against the guide's rules."""
    if args.users <= 0:
        raise UsageError("--users: the forecast needs a positive number of daily users")
    try:
        window_s = parse_window(args.window)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    url = args.from_prometheus
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--from-prometheus: expected an http(s) URL, got {url!r}")
    with httpx.Client(base_url=url, timeout=10.0) as client:
        window = read_window(client, window_s=window_s)
    measured = assess(window, users=args.users)
    sys.stdout.write(
        measured.model_dump_json(indent=2) + "\n" if args.json else render_measured(measured)
    )
    return 0
