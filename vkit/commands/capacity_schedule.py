"""``vkit capacity --schedule``: the planned fleet as a floor per hour of the week, and its saving.

    vkit capacity --users 100000 --schedule --peak-start 9 --weekend-share 0 --allow-zero
    vkit capacity --users 100000 --schedule --timezone Europe/Berlin --schedule-out week.json

The floors come from :func:`launcher.sizing.capacity.schedule.plan_schedule` for the cheapest
dedicated option of the plan; ``--schedule-out`` writes them as JSON, the file that
``vkit schedule keda|systemd|follow`` read. A plan with no
dedicated option, or ``--max-replicas`` below what an hour needs, is refused (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from launcher.sizing.capacity.capacity_plan import CapacityPlan
from launcher.sizing.capacity.schedule import (
    DAYS,
    HOURS_PER_WEEK,
    ReplicaSchedule,
    ScheduleError,
    WeekShape,
    plan_schedule,
    read_schedule,
)
from vkit.exit_codes import UsageError

SHAPE_FLAGS = {
    "peak_start": "--peak-start",
    "weekend_share": "--weekend-share",
    "timezone": "--timezone",
}


def add_schedule_flags(parser: Any) -> None:
    group = parser.add_argument_group("capacity on a schedule")
    group.add_argument(
        "--schedule",
        action="store_true",
        help="print the replica floor for each hour of the week and the monthly saving",
    )
    group.add_argument(
        "--peak-start", type=int, default=9, metavar="HOUR", help="the peak opens at (9)"
    )
    group.add_argument(
        "--weekend-share",
        type=float,
        default=1.0,
        metavar="F",
        help="a weekend day's traffic as a share of a weekday's (1.0; 0: closed)",
    )
    group.add_argument(
        "--allow-zero",
        action="store_true",
        help="hours without traffic get no replica (the gateway holds or spills meanwhile)",
    )
    group.add_argument(
        "--timezone", default="UTC", metavar="ZONE", help="IANA zone of the hours (UTC)"
    )
    group.add_argument(
        "--max-replicas",
        type=int,
        metavar="N",
        help="the most replicas the deployment can run: refused if an hour needs more",
    )
    group.add_argument(
        "--schedule-out", type=Path, metavar="FILE.json", help="write the schedule as JSON"
    )


def build_shape(args: argparse.Namespace) -> WeekShape:
    try:
        return WeekShape(
            peak_start=args.peak_start,
            weekend_share=args.weekend_share,
            allow_zero=args.allow_zero,
            timezone=args.timezone,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error.get("loc") else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{SHAPE_FLAGS.get(field, field)}: {message}") from None


def schedule_for_plan(
    plan: CapacityPlan, shape: WeekShape, max_replicas: int | None = None
) -> ReplicaSchedule:
    """The floors of the plan's cheapest dedicated option; refused when none serves the
    peak, or when ``max_replicas`` leaves an hour short."""
    serving = [o for o in plan.options if o.monthly_usd is not None and o.gpus]
    if not serving:
        raise ScheduleError(
            f"no GPU option serves {plan.model} at peak: a schedule has no capacity to give"
        )
    best = min(serving, key=lambda o: (o.monthly_usd or 0.0, o.gpus or 0))
    config = best.configuration(plan.quant)
    schedule = plan_schedule(
        plan.usage,
        shape,
        users_per_replica=best.users_per_replica or best.users_per_gpu,
        usd_per_replica_hour=best.usd_per_hour * best.tensor_parallel,
        option=" ".join(p for p in (f"{best.tensor_parallel}x {best.label}", config) if p),
        spares=plan.spares,
    )
    if max_replicas is None:
        return schedule
    if max_replicas < 0:
        raise UsageError(f"--max-replicas: {max_replicas} is not a number of replicas")
    try:
        capped = tuple(min(floor, max_replicas) for floor in schedule.floors)
        return ReplicaSchedule.model_validate(schedule.model_dump() | {"floors": capped})
    except ScheduleError as exc:
        raise ScheduleError(f"--max-replicas {max_replicas}: {exc}") from None


def day_ranges(days: list[int]) -> str:
    """``Mon-Fri``, ``Sat-Sun``, ``Mon,Wed``."""
    parts: list[str] = []
    start = previous = days[0]
    for day in [*days[1:], None]:
        if day is not None and day == previous + 1:
            previous = day
            continue
        parts.append(DAYS[start] if start == previous else f"{DAYS[start]}-{DAYS[previous]}")
        if day is not None:
            start = previous = day
    return ",".join(parts)


def grouped_runs(schedule: ReplicaSchedule) -> list[tuple[list[int], int, int, int]]:
    """(days, start, end, replicas): the runs of days that share the same hours and floor."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for run in schedule.runs():
        groups.setdefault((run.start, run.end, run.replicas), []).append(run.day)
    rows = [(days, start, end, n) for (start, end, n), days in groups.items()]
    return sorted(rows, key=lambda row: (row[0][0], row[1]))


def render_schedule(schedule: ReplicaSchedule) -> str:
    lines = [
        f"Replica floor by hour ({schedule.timezone}), one replica = {schedule.option} "
        f"at ${schedule.usd_per_replica_hour:.2f}/hr:"
    ]
    for days, start, end, replicas in grouped_runs(schedule):
        lines.append(f"  {day_ranges(days):<16} {start:02d}:00-{end:02d}:00  {replicas}")
    lines.append(
        f"Replica-hours a week: {sum(schedule.floors)} scheduled, "
        f"{schedule.peak_replicas * HOURS_PER_WEEK} always on at peak"
    )
    lines.append(
        f"Monthly: ${schedule.scheduled_usd:,.0f} scheduled vs ${schedule.always_on_usd:,.0f} "
        f"always on at peak: ${schedule.saved_usd:,.0f} saved"
    )
    return "\n".join(lines) + "\n"


def run_schedule(args: argparse.Namespace, plan: CapacityPlan) -> int:
    schedule = schedule_for_plan(plan, build_shape(args), args.max_replicas)
    if args.json:
        summary = {
            "scheduled_usd": schedule.scheduled_usd,
            "always_on_usd": schedule.always_on_usd,
            "saved_usd": schedule.saved_usd,
        }
        sys.stdout.write(json.dumps(schedule.model_dump() | summary, indent=2) + "\n")
    else:
        sys.stdout.write(render_schedule(schedule))
    if args.schedule_out is not None:
        args.schedule_out.write_text(schedule.model_dump_json(indent=2) + "\n")
        print(f"schedule written to {args.schedule_out}", file=sys.stderr)
    return 0


def load_schedule(path: Path) -> ReplicaSchedule:
    """A schedule file (``--schedule-out``), checked again: hand edits are refused when short."""
    return read_schedule(path)
