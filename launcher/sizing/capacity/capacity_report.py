"""A :class:`CapacityPlan` as text: a table for people, JSON and CSV for tools."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from launcher.sizing.capacity.capacity_plan import CapacityPlan
from launcher.sizing.capacity.options import GpuOptionPlan, Rejected, ServerlessPlan
from launcher.sizing.capacity.recommend import describe_worker
from launcher.sizing.capacity.search import why_not

CSV_COLUMNS = (
    "option",
    "gpu",
    "provider",
    "quant",
    "tensor_parallel",
    "usd_per_hour",
    "users_per_gpu",
    "per_user_tok_s",
    "gpu_tok_s",
    "gpus",
    "gpus_pessimistic",
    "monthly_usd",
    "usd_per_user",
    "utilization",
    "limited_by",
)

_TABLE: tuple[tuple[str, str, Callable[[GpuOptionPlan], str]], ...] = (
    ("option", "<", lambda o: o.label),
    ("config", "<", lambda o: f"TP{o.tensor_parallel} {o.quant}"),
    ("$/hr", ">", lambda o: f"{o.usd_per_hour:.2f}"),
    ("users/GPU", ">", lambda o: str(o.users_per_gpu) if o.users_per_gpu else "-"),
    ("tok/s/GPU", ">", lambda o: f"{o.gpu_tok_s:,.0f}" if o.users_per_gpu else "-"),
    ("GPUs", ">", lambda o: "-" if o.gpus is None else str(o.gpus)),
    ("$/month", ">", lambda o: _money(o.monthly_usd)),
    ("$/user", ">", lambda o: "-" if o.usd_per_user is None else f"{o.usd_per_user:,.2f}"),
    ("peak util", ">", lambda o: "-" if o.utilization is None else f"{o.utilization:.1%}"),
    ("limited by", "<", lambda o: o.limited_by),
)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _header(plan: CapacityPlan) -> list[str]:
    usage = plan.usage
    return [
        f"{usage.daily_users:,} daily users x {usage.requests_per_user:g} requests x "
        f"{usage.tokens_per_request} tokens; {usage.peak_share:.0%} of traffic in "
        f"{usage.peak_hours:g} h; >= {usage.user_tok_s:g} tok/s per user",
        f"model {plan.model} ({_searched(plan)}); peak ~{plan.peak_concurrency:.2f} concurrent "
        f"requests ({plan.peak_requests_per_second:.3f} req/s, "
        f"{plan.peak_output_tok_s:,.0f} output tok/s)"
        + (f"; {plan.spares} spare GPU(s)" if plan.spares else "")
        + ("; --enforce-eager (no CUDA graphs)" if plan.eager else ""),
    ]


def _grouped(rejected: list[Rejected]) -> str:
    """``does-not-fit: TP1 fp16, TP2 fp16; costs-more: TP4 fp8 ($5,386)``."""
    groups: dict[str, list[str]] = {}
    for item in rejected:
        cost = f" (${item.monthly_usd:,.0f})" if item.monthly_usd is not None else ""
        groups.setdefault(item.reason, []).append(item.config + cost)
    return "; ".join(f"{reason}: {', '.join(configs)}" for reason, configs in groups.items())


def _searched(plan: CapacityPlan) -> str:
    """``fp16`` or ``searched fp16, fp8 x TP 1, 2, 4, 8``."""
    quants, sizes = plan.searched_quant, plan.searched_tensor_parallel
    if quants == [plan.quant] and sizes == [1]:
        return plan.quant
    return f"searched {', '.join(quants)} x TP {', '.join(map(str, sizes))}"


def _option_rows(plan: CapacityPlan) -> list[str]:
    cells = [[name for name, _, _ in _TABLE]]
    cells += [[render(option) for _, _, render in _TABLE] for option in plan.options]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_TABLE))]
    aligns = [align for _, align, _ in _TABLE]
    return [
        "  ".join(
            f"{cell:{align}{width}}" for cell, align, width in zip(row, aligns, widths, strict=True)
        ).rstrip()
        for row in cells
    ]


def _footer(plan: CapacityPlan) -> list[str]:
    serverless, rec = plan.serverless, plan.recommendation
    lines = [serverless_line(serverless)]
    for o in plan.options:
        if not o.rejected:
            lines += [f"  {o.label}: {o.note}"] if o.note else []
        elif o.gpus is None:
            lines.append(f"  {o.label}: nothing serves: {why_not(o)}; {_grouped(o.rejected)}")
        else:
            lines.append(f"  {o.label}: {o.fleet(plan.quant)} wins; out: {_grouped(o.rejected)}")
    lines += [f"quality: {note}" for note in plan.quality_notes]
    lines += [f"note: {note}" for note in plan.guide_notes]
    lines.append(f"recommendation: {rec.choice} -- {rec.reason}")
    lines += band_lines(plan)
    if rec.crossover_users is not None and rec.crossover_busy_share is not None:
        lines.append(
            f"crossover: self-managed ({rec.crossover_option}) beats serverless from "
            f"~{rec.crossover_users:,} DAU, {describe_busy_share(rec.crossover_busy_share)}"
        )
    return lines


def band_lines(plan: CapacityPlan) -> list[str]:
    """How sure the answer is: the speed model's held-out error band, and the GPUs each option
    would take at its pessimistic end (every step slower by the band's upper error)."""
    band = plan.speed_band
    counts = [
        f"{o.label} {o.gpus_pessimistic if o.gpus_pessimistic is not None else '-'}"
        for o in plan.options
        if o.gpus is not None
    ]
    lines = [f"how sure: {band.line()}"]
    if counts:
        lines.append(
            f"  at the pessimistic end (every step {band.over:.0%} slower than modelled), "
            f"GPUs: {', '.join(counts)}"
        )
    return lines


def serverless_line(serverless: ServerlessPlan) -> str:
    """``serverless (runpod 80 GB (A100) fp8): 6.1 s a request + 0.3 s idle/cold ...``."""
    if serverless.worker is None or serverless.monthly_usd is None:
        return f"serverless: {describe_worker(serverless)}"
    count = serverless.gpus_per_worker
    rate = f"${serverless.usd_per_gpu_second:.6f}/GPU-second" + (
        f" x {count} GPUs" if count > 1 else ""
    )
    cold = (
        f", cold start ~{serverless.cold_start_s:,.0f} s, "
        f"idle timeout {serverless.idle_timeout_s:g} s"
        if serverless.cold_start_s or serverless.idle_timeout_s
        else ""
    )
    return (
        f"serverless ({describe_worker(serverless)}): {serverless.seconds_per_request:.1f} s a "
        f"request{cold}; {rate} x {serverless.busy_gpu_seconds:,.0f} billed GPU-seconds = "
        f"${serverless.monthly_usd:,.0f}/month (${serverless.usd_per_user or 0:,.2f}/user)"
    )


def describe_busy_share(share: float) -> str:
    """``above 33% GPU utilization``; above 100%, the batching a GPU must do to pay off."""
    if share <= 1:
        return f"above {share:.0%} GPU utilization"
    return f"once each GPU does the work of {share:.1f} busy serverless GPUs (batching)"


def _rounded(row: dict[str, object]) -> dict[str, object]:
    """Cents for money, four decimals for shares: no float noise in the CSV."""
    digits = {"monthly_usd": 2, "usd_per_user": 4, "utilization": 4}
    return {
        key: round(value, digits[key])
        for key, value in row.items()
        if key in digits and isinstance(value, float)
    }


def render_table(plan: CapacityPlan) -> str:
    return "\n".join([*_header(plan), "", *_option_rows(plan), "", *_footer(plan)]) + "\n"


def render_json(plan: CapacityPlan) -> str:
    return plan.model_dump_json(indent=2) + "\n"


def render_csv(plan: CapacityPlan) -> str:
    """One row per GPU option and a last row for serverless; empty cells where n/a."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for option in plan.options:
        row = option.model_dump(include=set(CSV_COLUMNS))
        writer.writerow({**row, **_rounded(row), "option": option.label})
    serverless = plan.serverless
    writer.writerow(
        {
            "option": "serverless",
            **_rounded(
                {"monthly_usd": serverless.monthly_usd, "usd_per_user": serverless.usd_per_user}
            ),
        }
    )
    return out.getvalue()
