"""Budgets per key: tokens and dollars over a day, a week, a calendar month and in total.

    budgets:                      # in the keys file, under a key
      day: {tokens: 2000000}
      month: {tokens: 40000000, dollars: 250}
      total: {dollars: 1000}

Windows are UTC: a day from midnight, a week from Monday's midnight (ISO weeks), a month from
the 1st; ``total`` never resets. :func:`window_starts` and :func:`resets_at` are the pure
calendar. :class:`BudgetBook` is what admission reads: each key's spending per window, from the
ledger (refreshed by :mod:`gateway.ledger.writer`) plus what this gateway counted since and has
not yet written, so the check is a few dict look-ups. Over a budget: 429 ``budget_exceeded``
(:class:`gateway.errors.BudgetExceeded`) with ``x-budget-*`` headers (what is left, when it
resets). Dollars are the ledger's split of the GPU bill (:mod:`gateway.ledger.dollars`) as of
the last refresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import BudgetExceeded

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")


class Limit(BaseModel):
    """The most a key may spend in one window: tokens, dollars, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int | None = Field(default=None, ge=1)
    dollars: float | None = Field(default=None, gt=0)


class KeyBudgets(BaseModel):
    """A key's budgets per window; an absent window has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: Limit | None = None
    week: Limit | None = None
    month: Limit | None = None
    total: Limit | None = None

    def limits(self) -> list[tuple[Period, Limit]]:
        return [(p, limit) for p in PERIODS if (limit := getattr(self, p)) is not None]

    @property
    def wants_dollars(self) -> bool:
        return any(limit.dollars is not None for _, limit in self.limits())


def window_starts(now: datetime) -> dict[str, int]:
    """The start of the day, week and month ``now`` is in (UTC), Unix seconds."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - timedelta(days=day.weekday())
    month = day.replace(day=1)
    starts = {"day": day, "week": week, "month": month}
    return {name: int(start.timestamp()) for name, start in starts.items()}


def resets_at(period: Period, now: datetime) -> datetime | None:
    """When the window of ``period`` that ``now`` is in ends (``None`` for ``total``)."""
    if period == "total":
        return None
    start = datetime.fromtimestamp(window_starts(now)[period], UTC)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


@dataclass(frozen=True, slots=True)
class Spent:
    """A key's spending in each window: tokens and dollars."""

    tokens: Mapping[str, int] = field(default_factory=dict)
    dollars: Mapping[str, float] = field(default_factory=dict)


class BudgetBook:
    """Each key's spending as of the last refresh, plus its tokens not yet in the ledger."""

    def __init__(self) -> None:
        self.spent: dict[str, Spent] = {}
        self.unwritten: dict[str, int] = {}  # tokens counted here, not yet in the ledger
        self.windows: dict[str, int] = {}
        self.refreshed_at: datetime | None = None
        # period -> (its window's end, Unix seconds; that end as x-budget-reset): recomputed
        # only once the window has ended, so an admitted request formats no date
        self._resets: dict[Period, tuple[float, str]] = {}

    def replace(self, spent: dict[str, Spent], windows: dict[str, int], at: datetime) -> None:
        self.spent, self.windows, self.refreshed_at = spent, windows, at

    def refusal(self, name: str, budgets: KeyBudgets | None, at: float) -> BudgetExceeded | None:
        """The 429 for key ``name`` if it is at or over one of ``budgets`` at ``at`` (Unix
        seconds), else ``None``: dict look-ups and comparisons until it refuses."""
        if budgets is None:
            return None
        spent = self.spent.get(name, _NOTHING)
        extra = self.unwritten.get(name, 0)
        for period, limit in budgets.limits():
            if limit.tokens is not None:
                used = spent.tokens.get(period, 0) + extra
                if used >= limit.tokens:
                    return _exceeded(name, period, "tokens", limit.tokens, used, at)
            if limit.dollars is not None:
                paid = spent.dollars.get(period, 0.0)
                if paid >= limit.dollars:
                    return _exceeded(name, period, "dollars", limit.dollars, paid, at)
        return None

    def remaining(self, name: str, budgets: KeyBudgets | None, at: float) -> dict[str, str]:
        """The ``x-budget-*`` headers of an admitted request of key ``name``: what is left of
        the budget with the smallest share left, and when it resets (none without budgets)."""
        if budgets is None:
            return {}
        spent = self.spent.get(name, _NOTHING)
        extra = self.unwritten.get(name, 0)
        tightest: tuple[float, Period, str, float, float] | None = None
        for period, limit in budgets.limits():
            if limit.tokens is not None:
                left = max(limit.tokens - spent.tokens.get(period, 0) - extra, 0)
                share = left / limit.tokens
                if tightest is None or share < tightest[0]:
                    tightest = (share, period, "tokens", limit.tokens, left)
            if limit.dollars is not None:
                left_paid = max(limit.dollars - spent.dollars.get(period, 0.0), 0.0)
                share = left_paid / limit.dollars
                if tightest is None or share < tightest[0]:
                    tightest = (share, period, "dollars", limit.dollars, left_paid)
        if tightest is None:
            return {}
        _, period, unit, limit_value, left_value = tightest
        headers = {
            "x-budget-period": period,
            f"x-budget-limit-{unit}": _amount(unit, limit_value),
            f"x-budget-remaining-{unit}": _amount(unit, left_value),
        }
        if period != "total":
            headers["x-budget-reset"] = self._reset_text(period, at)
        return headers

    def _reset_text(self, period: Period, at: float) -> str:
        cached = self._resets.get(period)
        if cached is not None and at < cached[0]:
            return cached[1]
        reset = resets_at(period, datetime.fromtimestamp(at, UTC))
        assert reset is not None  # not "total"
        text = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        self._resets[period] = (reset.timestamp(), text)
        return text


def budget_headers(
    period: Period, unit: str, limit: float, left: float, reset: datetime | None
) -> dict[str, str]:
    """``x-budget-period``, ``-limit-UNIT``, ``-remaining-UNIT`` and ``-reset`` (not for
    ``total``): tokens as whole numbers, dollars with cents."""
    headers = {
        "x-budget-period": period,
        f"x-budget-limit-{unit}": _amount(unit, limit),
        f"x-budget-remaining-{unit}": _amount(unit, left),
    }
    if reset is not None:
        headers["x-budget-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    return headers


def _amount(unit: str, value: float) -> str:
    return str(int(value)) if unit == "tokens" else f"{value:.2f}"


_NOTHING = Spent()


def _exceeded(
    name: str, period: Period, unit: str, limit: float, used: float, at: float
) -> BudgetExceeded:
    now = datetime.fromtimestamp(at, UTC)
    reset = resets_at(period, now)
    retry = (reset - now).total_seconds() if reset is not None else 0.0
    shown = f"{int(limit)} tokens" if unit == "tokens" else f"${limit:.2f}"
    window = "in total" if period == "total" else f"this {period}"
    headers = budget_headers(period, unit, limit, 0, reset)
    when = f"; it resets at {headers['x-budget-reset']}" if reset is not None else ""
    return BudgetExceeded(
        f"key '{name}' has used its budget of {shown} {window}{when}",
        reason="budget",
        retry_after=retry if reset is not None else 86400.0,
        ratelimit_headers=headers,
    )
