"""``vkit usage``: the usage ledger for a period, by key, model and day, with dollars.

    vkit usage --period this-month                        # the ledger beside keys.yaml
    vkit usage --period 2026-11 --by key --format csv     # per key: finance's export
    vkit usage --period 2026-12-01..2026-12-07 --key alice --by day --format json
    vkit usage --ledger postgresql://vkit@db/vkit --period today

Periods (UTC): ``today``, ``yesterday``, ``this-week``, ``last-week``, ``this-month``,
``last-month``, a month ``YYYY-MM``, a day ``YYYY-MM-DD``, or ``FROM..TO`` (days, both
included). Dollars are each replica group's price per hour split by each key's share of the
tokens it served in that hour; hours a group ran and served nothing are the ``(idle)`` line
(docs/usage-ledger.md). Requests a spill-over endpoint served (docs/spill-over.md) are lines of
their own, ``backend`` naming the endpoint (``local``: the replicas), whenever the period has
any (``--by backend`` asks for the column always): they take no share of the GPU bill, their
dollars being the endpoint's own invoice. An unknown period or key, or a ledger that cannot be
read, is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.ledger import UsageRow, open_store, split_bill
from gateway.ledger.dollars import IDLE
from gateway.spill_settings import LOCAL
from vkit.exit_codes import CliError, UsageError

GROUPINGS = ("key", "model", "day", "backend")


@dataclass(frozen=True, slots=True)
class Period:
    """``[start, end)``, UTC, and how it was asked for."""

    name: str
    start: datetime
    end: datetime


def parse_period(text: str, now: datetime) -> Period:
    """The period ``text`` names (see the module docstring); :class:`UsageError` if none."""
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    week = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    named = {
        "today": (today, today + timedelta(days=1)),
        "yesterday": (today - timedelta(days=1), today),
        "this-week": (week, week + timedelta(days=7)),
        "last-week": (week - timedelta(days=7), week),
        "this-month": (month, _next_month(month)),
        "last-month": (_previous_month(month), month),
    }
    if text in named:
        start, end = named[text]
        return Period(text, start, end)
    if re.fullmatch(r"\d{4}-\d{2}", text):
        start = _day(text + "-01", text)
        return Period(text, start, _next_month(start))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        start = _day(text, text)
        return Period(text, start, start + timedelta(days=1))
    first, sep, last = text.partition("..")
    if sep:
        start, end = _day(first, text), _day(last, text) + timedelta(days=1)
        if end <= start:
            raise UsageError(f"period '{text}' ends before it starts")
        return Period(text, start, end)
    raise UsageError(
        f"unknown period '{text}': use today, yesterday, this-week, last-week, this-month, "
        "last-month, YYYY-MM, YYYY-MM-DD or FROM..TO"
    )


def _day(text: str, period: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    except ValueError:
        raise UsageError(f"unknown period '{period}': '{text}' is not a date") from None


def _next_month(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month, day=1)


def _previous_month(start: datetime) -> datetime:
    year, month = (start.year - 1, 12) if start.month == 1 else (start.year, start.month - 1)
    return start.replace(year=year, month=month, day=1)


def report(
    rows: Sequence[UsageRow],
    prices: dict[tuple[int, str], float],
    by: Sequence[str],
    only_key: str | None = None,
) -> list[dict[str, Any]]:
    """One line per group of ``by`` (key, model, day, backend): requests, tokens, dollars; then the
    idle dollars of each model (and day), under the key ``(idle)``. With ``only_key``, that
    key's lines alone (priced by its share of every key's tokens, ``rows``), and no idle."""
    split = split_bill(rows, prices)
    lines: dict[tuple[str, ...], dict[str, Any]] = {}

    def line(key: str, model: str, hour: int, backend: str = LOCAL) -> dict[str, Any]:
        fields = {"key": key, "model": model, "day": _day_of(hour), "backend": backend}
        group = tuple(fields[name] for name in by)
        found = lines.get(group)
        if found is None:
            found = lines[group] = {name: fields[name] for name in by} | {
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "dollars": 0.0,
            }
        return found

    for row in rows:
        if only_key is None or row.key == only_key:
            found = line(row.key, row.model, row.hour, row.backend)
            found["requests"] += row.requests
            found["prompt_tokens"] += row.prompt_tokens
            found["completion_tokens"] += row.completion_tokens
    for (key, model, hour), dollars in split.by_row.items():
        if only_key is None or key == only_key:
            line(key, model, hour)["dollars"] += dollars
    if only_key is None:
        for (model, hour), dollars in split.idle.items():
            line(IDLE, model, hour)["dollars"] += dollars
    ordered = sorted(lines.items(), key=lambda item: (IDLE in item[0], item[0]))
    for _, found in ordered:
        found["dollars"] = round(found["dollars"], 6)
    return [found for _, found in ordered]


def _day_of(hour: int) -> str:
    return datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%d")


def render(lines: list[dict[str, Any]], by: Sequence[str], form: str, period: Period) -> str:
    columns = [*by, "requests", "prompt_tokens", "completion_tokens", "dollars"]
    if form == "json":
        billed = sum(line["dollars"] for line in lines)
        idle = sum(line["dollars"] for line in lines if line.get("key") == IDLE)
        return json.dumps(
            {
                "period": {
                    "name": period.name,
                    "start": _iso(period.start),
                    "end": _iso(period.end),
                },
                "rows": lines,
                "dollars": round(billed, 6),
                "idle_dollars": round(idle, 6),
            },
            indent=2,
        )
    if form == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        return out.getvalue().rstrip("\n")
    return _table(lines, columns, period)


def _table(lines: list[dict[str, Any]], columns: list[str], period: Period) -> str:
    shown = [[_cell(line[c]) for c in columns] for line in lines]
    heads = [c.upper().replace("_TOKENS", "") for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in shown)) for i, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in shown]
    billed = sum(line["dollars"] for line in lines)
    idle = sum(line["dollars"] for line in lines if line.get("key") == IDLE)
    share = f" ({100 * idle / billed:.1f}% of the GPU bill)" if billed else ""
    out.append(f"{period.name}: ${billed:.2f} billed, ${idle:.2f} idle{share}")
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ledger_url(ledger: str | None, keys_file: Path) -> str:
    """``--ledger``, else the SQLite ledger beside the keys file (as the gateway keeps it)."""
    if ledger is not None:
        return ledger
    path = keys_file.parent / "usage.sqlite3"
    if not path.is_file():
        raise CliError(f"no ledger at {path}: pass --ledger URL, or --keys-file beside it")
    return f"sqlite:///{path}"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "usage",
        help="usage and dollars per key, model and day",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--period", default="this-month", help="default: this-month")
    parser.add_argument(
        "--by",
        default="key,model",
        help="comma-separated: key, model, day, backend (default: key,model; backend is added "
        "when something spilled)",
    )
    parser.add_argument("--key", help="one key's usage only")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ledger_flags(parser)
    parser.set_defaults(handler=run)


def ledger_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", help="the ledger's URL (sqlite:///PATH or postgresql://...)")
    parser.add_argument(
        "--keys-file",
        type=Path,
        default=Path("keys.yaml"),
        help="without --ledger: the usage.sqlite3 beside this file (default: keys.yaml)",
    )


def run(args: argparse.Namespace) -> int:
    by = [part.strip() for part in args.by.split(",") if part.strip()]
    unknown = [part for part in by if part not in GROUPINGS]
    if unknown or not by:
        wrong = ",".join(unknown) or args.by
        raise UsageError(f"--by: use key, model, day and/or backend, not '{wrong}'")
    period = parse_period(args.period, datetime.now(UTC))
    store = open_store(ledger_url(args.ledger, args.keys_file))
    try:
        since, until = int(period.start.timestamp()), int(period.end.timestamp())
        if args.key is not None and args.key not in store.key_names():
            raise CliError(f"no usage recorded for key '{args.key}' in the ledger")
        rows = store.usage(since, until)  # every key's: a key's dollars are its share
        if "backend" not in by and any(row.backend != LOCAL for row in rows):
            by.append("backend")  # spilled usage is never folded into the replicas'
        lines = report(rows, store.group_hours(since, until), by, only_key=args.key)
    finally:
        store.close()
    print(render(lines, by, args.format, period))
    return 0
