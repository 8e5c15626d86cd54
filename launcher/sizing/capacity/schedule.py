"""Capacity on a schedule: the replica floor for every hour of the week, and what it saves.

The planner's day (:mod:`launcher.sizing.capacity.usage`) puts ``peak_share`` of a weekday's
requests in ``peak_hours`` whole hours from ``peak_start`` and spreads the rest evenly over the
other hours; a weekend day carries ``weekend_share`` of a weekday's traffic, shaped the same.
Each hour's concurrency is Little's law on that hour's arrival rate, and its replicas are the
planner's own rule (:func:`launcher.sizing.capacity.costs.gpus_needed`: ``ceil(concurrency /
users per replica)``, plus the spares), so the peak hour asks for exactly the fleet that
``vkit capacity`` plans. An hour with no traffic keeps one warm replica unless zero is allowed
(the gateway holds or spills what comes then).

    >>> shape = WeekShape(peak_start=9, weekend_share=0.0, allow_zero=True)
    >>> floors = weekly_floors(UsageProfile(daily_users=100_000), shape, users_per_replica=10)
    >>> floors[9], floors[3], floors[24 * 5 + 12]   # Monday 09:00, 03:00, Saturday noon
    (4, 1, 0)

Hours are counted from Monday 00:00 in the schedule's time zone (168 of them). A schedule
whose hour holds fewer replicas than that hour needs is refused (:class:`ScheduleError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from launcher.errors import InvalidInput
from launcher.sizing.capacity.usage import (
    HOURS_PER_MONTH,
    SECONDS_PER_HOUR,
    UsageProfile,
    requests_per_day,
    seconds_per_request,
)

HOURS_PER_WEEK = 168
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

__all__ = [
    "DAYS",
    "HOURS_PER_WEEK",
    "HourRun",
    "ReplicaSchedule",
    "ScheduleError",
    "WeekShape",
    "day_runs",
    "hour_concurrency",
    "hour_name",
    "plan_schedule",
    "read_schedule",
    "weekly_floors",
    "weekly_needs",
]


class ScheduleError(InvalidInput):
    """A schedule that leaves an hour short of what its traffic needs, or no capacity at all."""


class WeekShape(BaseModel):
    """When the planner's day happens: where its peak window opens, how busy a weekend day is
    (a share of a weekday), the clock it runs on, and whether idle hours may have no replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak_start: int = Field(default=9, ge=0, le=23, description="hour the peak window opens")
    weekend_share: float = Field(
        default=1.0, ge=0, le=1, description="a Saturday's or Sunday's traffic / a weekday's"
    )
    allow_zero: bool = Field(default=False, description="hours without traffic get no replica")
    timezone: str = Field(default="UTC", description="IANA time zone of the hours")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value


def hour_name(hour_of_week: int) -> str:
    """``Tue 10:00`` for hour 34."""
    return f"{DAYS[hour_of_week // 24]} {hour_of_week % 24:02d}:00"


def _day_shares(profile: UsageProfile, peak_start: int) -> list[float]:
    """Share of a day's requests in each of its 24 hours (they sum to 1)."""
    if profile.peak_hours != int(profile.peak_hours):
        raise ScheduleError(
            f"--peak-hours {profile.peak_hours:g}: a schedule needs a whole number of hours"
        )
    peak_hours = int(profile.peak_hours)
    peak = {(peak_start + offset) % 24 for offset in range(peak_hours)}
    off_hours = 24 - peak_hours
    off_share = (1 - profile.peak_share) / off_hours if off_hours else 0.0
    return [profile.peak_share / peak_hours if h in peak else off_share for h in range(24)]


def hour_concurrency(profile: UsageProfile, shape: WeekShape) -> list[float]:
    """Average requests in flight in each hour of the week (Little's law, as the planner's peak)."""
    day = _day_shares(profile, shape.peak_start)
    per_share = requests_per_day(profile) * seconds_per_request(profile) / SECONDS_PER_HOUR
    week = []
    for hour in range(HOURS_PER_WEEK):
        weekend = hour // 24 >= 5
        week.append(per_share * day[hour % 24] * (shape.weekend_share if weekend else 1.0))
    return week


def weekly_needs(profile: UsageProfile, shape: WeekShape, users_per_replica: int) -> list[int]:
    """Replicas each hour's traffic needs, spares not counted (0 only where no traffic comes)."""
    if users_per_replica <= 0:
        raise ScheduleError("no replica serves the traffic: there is no capacity at peak")
    return [
        math.ceil(load / users_per_replica - 1e-9) if load > 0 else 0
        for load in hour_concurrency(profile, shape)
    ]


def weekly_floors(
    profile: UsageProfile, shape: WeekShape, users_per_replica: int, spares: int = 0
) -> list[int]:
    """The replica floor of each hour: its need plus ``spares`` where traffic comes; an hour
    without traffic keeps one replica, or none with ``allow_zero``."""
    idle = 0 if shape.allow_zero else 1
    return [
        need + spares if need else idle for need in weekly_needs(profile, shape, users_per_replica)
    ]


@dataclass(frozen=True)
class HourRun:
    """Hours ``start``..``end`` (end exclusive, 24 = midnight) of ``day`` at ``replicas``."""

    day: int
    start: int
    end: int
    replicas: int


def day_runs(floors: tuple[int, ...] | list[int]) -> list[HourRun]:
    """The week as runs of equal floors, cut at midnight (the compact form renderers use)."""
    runs: list[HourRun] = []
    for day in range(7):
        start = 0
        for hour in range(1, 25):
            if hour == 24 or floors[day * 24 + hour] != floors[day * 24 + start]:
                runs.append(HourRun(day, start, hour, floors[day * 24 + start]))
                start = hour
    return runs


class ReplicaSchedule(BaseModel):
    """A floor of replicas for each hour of the week, checked against what each hour needs.

    ``needed`` is each hour's need from the plan (spares not counted); a floor below it, or a
    week without a replica, is refused with the first hour that falls short."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    option: str = Field(description="the replica the floors count, e.g. '1x rtx4090'")
    usd_per_replica_hour: float = Field(gt=0)
    floors: tuple[int, ...] = Field(min_length=HOURS_PER_WEEK, max_length=HOURS_PER_WEEK)
    needed: tuple[int, ...] = Field(min_length=HOURS_PER_WEEK, max_length=HOURS_PER_WEEK)

    @model_validator(mode="after")
    def _covers_every_hour(self) -> ReplicaSchedule:
        check_covers(self.floors, self.needed)
        return self

    @property
    def peak_replicas(self) -> int:
        return max(self.floors)

    @property
    def always_on_usd(self) -> float:
        """A month of the peak's fleet, always on (the planner's monthly cost)."""
        return self.peak_replicas * self.usd_per_replica_hour * HOURS_PER_MONTH

    @property
    def scheduled_usd(self) -> float:
        """A month of the floors: replica-hours of an average week, times 720 / 168."""
        week_hours = sum(self.floors)
        return week_hours * self.usd_per_replica_hour * HOURS_PER_MONTH / HOURS_PER_WEEK

    @property
    def saved_usd(self) -> float:
        return self.always_on_usd - self.scheduled_usd

    def runs(self) -> list[HourRun]:
        return day_runs(self.floors)


def check_covers(floors: tuple[int, ...] | list[int], needed: tuple[int, ...] | list[int]) -> None:
    """Refuse a week with no replica, or an hour below its need, naming the first such hour."""
    if max(floors, default=0) <= 0:
        raise ScheduleError("the schedule has no replica at any hour: no capacity at peak")
    for hour, (floor, need) in enumerate(zip(floors, needed, strict=True)):
        if floor < 0:
            raise ScheduleError(f"{hour_name(hour)}: {floor} replicas is not a number of replicas")
        if floor < need:
            raise ScheduleError(
                f"{hour_name(hour)}: {floor} replica(s) scheduled, its traffic needs {need}"
            )


def plan_schedule(
    profile: UsageProfile,
    shape: WeekShape,
    *,
    users_per_replica: int,
    usd_per_replica_hour: float,
    option: str,
    spares: int = 0,
) -> ReplicaSchedule:
    """The week's floors for one planned replica (its users and price), ready to render."""
    needed = weekly_needs(profile, shape, users_per_replica)
    return ReplicaSchedule(
        timezone=shape.timezone,
        option=option,
        usd_per_replica_hour=usd_per_replica_hour,
        floors=tuple(weekly_floors(profile, shape, users_per_replica, spares)),
        needed=tuple(needed),
    )


def read_schedule(path: Path) -> ReplicaSchedule:
    """A schedule file (``vkit capacity --schedule-out``), checked again as it is read: a
    hand edit that leaves an hour short is refused, naming the hour."""
    try:
        return ReplicaSchedule.model_validate_json(path.read_text())
    except OSError as exc:
        raise ScheduleError(f"{path}: {exc.strerror}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ()))
        raise ScheduleError(f"{path}: {where}: {error['msg']}") from None
