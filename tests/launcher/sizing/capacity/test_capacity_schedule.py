"""The week's replica floors: the B2B curve, the planner's peak, and the refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from launcher.sizing.capacity import CapacityRequest, UsageProfile, plan_capacity
from launcher.sizing.capacity.schedule import (
    HOURS_PER_WEEK,
    ReplicaSchedule,
    ScheduleError,
    WeekShape,
    day_runs,
    hour_concurrency,
    plan_schedule,
    weekly_floors,
)
from launcher.sizing.capacity.usage import peak_concurrency

B2B = UsageProfile(daily_users=100_000)  # the guide's traffic, 70% in 8 office hours
CLOSED_WEEKENDS = WeekShape(peak_start=9, weekend_share=0.0, allow_zero=True)


def hour(day: int, at: int) -> int:
    return day * 24 + at


def test_the_b2b_week_is_the_peak_fleet_in_office_hours_one_at_night_none_at_weekends() -> None:
    floors = weekly_floors(B2B, CLOSED_WEEKENDS, users_per_replica=15)
    assert len(floors) == HOURS_PER_WEEK
    for day in range(5):
        assert floors[hour(day, 9) : hour(day, 17)] == [3] * 8
        assert floors[hour(day, 0) : hour(day, 9)] == [1] * 9
        assert floors[hour(day, 17) : hour(day, 24)] == [1] * 7
    assert floors[hour(5, 0) :] == [0] * 48


def test_the_peak_hour_asks_for_exactly_the_planners_fleet() -> None:
    plan = plan_capacity(CapacityRequest(usage=B2B, spares=1))
    best = min((o for o in plan.options if o.monthly_usd), key=lambda o: o.monthly_usd or 0)
    floors = weekly_floors(B2B, WeekShape(), best.users_per_gpu, spares=1)
    assert max(floors) == best.gpus
    assert max(hour_concurrency(B2B, WeekShape())) == pytest.approx(peak_concurrency(B2B))


def test_the_week_carries_the_days_traffic() -> None:
    load = hour_concurrency(B2B, WeekShape(weekend_share=0.5))
    weekday, saturday = sum(load[:24]), sum(load[hour(5, 0) : hour(6, 0)])
    assert saturday == pytest.approx(weekday / 2)


def test_idle_hours_keep_one_replica_unless_zero_is_allowed() -> None:
    closed = WeekShape(weekend_share=0.0)
    assert weekly_floors(B2B, closed, users_per_replica=15)[hour(6, 12)] == 1
    assert weekly_floors(B2B, closed, 15, spares=1)[hour(6, 12)] == 1  # spares serve traffic
    assert weekly_floors(B2B, closed, 15, spares=1)[hour(0, 12)] == 4


def test_a_peak_window_that_wraps_midnight() -> None:
    floors = weekly_floors(B2B, WeekShape(peak_start=20), users_per_replica=15)
    assert floors[hour(0, 20) : hour(1, 4)] == [3] * 8
    assert floors[hour(1, 4)] == 1


def test_runs_cut_the_week_at_midnight() -> None:
    runs = day_runs(weekly_floors(B2B, CLOSED_WEEKENDS, users_per_replica=15))
    monday = [(r.start, r.end, r.replicas) for r in runs if r.day == 0]
    assert monday == [(0, 9, 1), (9, 17, 3), (17, 24, 1)]
    assert [(r.day, r.start, r.end, r.replicas) for r in runs if r.day >= 5] == [
        (5, 0, 24, 0),
        (6, 0, 24, 0),
    ]


def test_the_b2b_saving() -> None:
    schedule = plan_schedule(
        B2B, CLOSED_WEEKENDS, users_per_replica=15, usd_per_replica_hour=0.39, option="1x rtx4090"
    )
    assert sum(schedule.floors) == 5 * (8 * 3 + 16)
    assert schedule.always_on_usd == pytest.approx(3 * 0.39 * 720)  # $842
    assert schedule.scheduled_usd == pytest.approx(200 * 0.39 * 720 / 168)  # $334
    assert round(schedule.saved_usd) == 508


def test_a_floor_below_an_hours_need_is_refused_naming_the_hour() -> None:
    schedule = plan_schedule(
        B2B, CLOSED_WEEKENDS, users_per_replica=15, usd_per_replica_hour=0.39, option="x"
    )
    short = list(schedule.floors)
    short[hour(1, 10)] = 2
    with pytest.raises(
        ScheduleError, match=r"^Tue 10:00: 2 replica\(s\) scheduled, its traffic needs 3$"
    ):
        ReplicaSchedule.model_validate(schedule.model_dump() | {"floors": tuple(short)})


def test_a_week_without_a_replica_is_refused() -> None:
    with pytest.raises(ScheduleError, match="no capacity at peak"):
        ReplicaSchedule(option="x", usd_per_replica_hour=1, floors=(0,) * 168, needed=(0,) * 168)


def test_no_replica_that_serves_is_no_capacity_at_peak() -> None:
    with pytest.raises(ScheduleError, match="no capacity at peak"):
        weekly_floors(B2B, WeekShape(), users_per_replica=0)


def test_fractional_peak_hours_and_unknown_zones_are_refused() -> None:
    with pytest.raises(ScheduleError, match="whole number of hours"):
        weekly_floors(B2B.model_copy(update={"peak_hours": 7.5}), WeekShape(), 15)
    with pytest.raises(ValidationError, match="IANA"):
        WeekShape(timezone="Mars/Olympus")
