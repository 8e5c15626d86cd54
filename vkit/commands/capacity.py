"""``vkit capacity``: daily users -> GPUs, $/month, $/user, serverless, recommendation, chart.

    vkit capacity --users 10000
    vkit capacity --users 100000 --model 70b --quant fp8 --gpus h100,h200 --redundancy 1 --json
    vkit capacity --users 1000 --csv --plot cost.png

The Namespace stops in :func:`run`: it becomes a :class:`CapacityRequest` (a validation error
names the flag, exit 2), the planner runs, and the plan is printed as a table, JSON or CSV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from launcher.sizing.capacity.capacity_plan import CapacityPlan, plan_capacity
from launcher.sizing.capacity.capacity_report import render_csv, render_json, render_table
from launcher.sizing.capacity.costs import (
    SERVERLESS_USD_PER_GPU_SECOND,
    PricedGpu,
    parse_priced_gpu,
)
from launcher.sizing.capacity.options import CapacityRequest
from launcher.sizing.capacity.usage import UsageProfile
from vkit.exit_codes import CliError, UsageError

# Request/usage field -> the flag that sets it, for one-line validation errors.
FLAGS: dict[str, str] = {
    "daily_users": "--users",
    "requests_per_user": "--requests-per-user",
    "tokens_per_request": "--tokens-per-request",
    "prompt_tokens": "--prompt-tokens",
    "peak_share": "--peak-share",
    "peak_hours": "--peak-hours",
    "user_tok_s": "--tok-s",
    "model": "--model",
    "quant": "--quant",
    "spares": "--redundancy",
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
        "--tokens-per-request", type=int, default=200, metavar="N", help="output tokens (200)"
    )
    usage.add_argument(
        "--prompt-tokens", type=int, default=500, metavar="N", help="prompt tokens (500)"
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
        "--quant", default="fp16", metavar="Q", help="bf16, fp16, fp8, int8, awq, gptq"
    )
    serving.add_argument("--redundancy", type=int, default=0, metavar="N", help="spare GPUs")
    serving.add_argument(
        "--gpus",
        metavar="LIST",
        help="comma-separated GPU[@PROVIDER][=USD_PER_HOUR] (default: every priced GPU)",
    )
    serving.add_argument(
        "--serverless-rate",
        type=float,
        default=SERVERLESS_USD_PER_GPU_SECOND,
        metavar="USD",
        help="serverless $ per GPU-second (default %(default).6f)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON")
    output.add_argument("--csv", action="store_true", help="print the options as CSV")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw cost against DAU")
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
        return CapacityRequest(
            usage=usage,
            model=args.model,
            quant=args.quant,
            spares=args.redundancy,
            serverless_usd_per_gpu_second=args.serverless_rate,
        )
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """``--peak-share: Input should be less than or equal to 1`` (one line)."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][-1]) if error.get("loc") else ""
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
    request = build_request(args)
    draw = chart_drawer() if args.plot is not None else None
    plan = plan_capacity(request, options=parse_gpu_list(args.gpus))
    render = render_json if args.json else render_csv if args.csv else render_table
    sys.stdout.write(render(plan))
    if draw is not None:
        draw(plan, args.plot)
        print(f"chart written to {args.plot}", file=sys.stderr)
    return 0


def chart_drawer() -> Callable[[CapacityPlan, Path], Path]:
    """The chart function; matplotlib is the optional extra ``vkit[plot]`` and loads only here."""
    try:
        from launcher.sizing.capacity.cost_chart import draw_cost_chart
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "matplotlib":
            raise
        raise CliError("--plot needs matplotlib: pip install 'vkit[plot]'") from None
    return draw_cost_chart
