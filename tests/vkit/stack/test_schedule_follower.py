"""The follower's pieces: the hour of the week in the schedule's zone, one report per change,
and the compose commands for a floor."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from vkit.stack.schedule_follower import (
    ScheduleFollower,
    compose_commands,
    follow,
    hour_of_week,
)


def test_the_hour_of_the_week_is_read_in_the_schedules_zone() -> None:
    monday_7_utc = datetime(2026, 12, 7, 7, 30, tzinfo=UTC)
    assert hour_of_week("UTC", lambda: monday_7_utc)() == 7
    assert hour_of_week("Europe/Berlin", lambda: monday_7_utc)() == 8  # CET, UTC+1
    sunday_late = datetime(2026, 12, 13, 23, 59, tzinfo=UTC)
    assert hour_of_week("UTC", lambda: sunday_late)() == 167
    assert hour_of_week("Europe/Berlin", lambda: sunday_late)() == 0  # Monday already


def test_each_change_is_reported_once() -> None:
    hour = [0]
    follower = ScheduleFollower((1, 1, 3, 0), hour_now=lambda: hour[0])
    seen = []
    for at in (0, 1, 2, 2, 3, 4):  # hour 4 wraps to the first
        hour[0] = at
        seen.append(follower.due())
    assert seen == [1, None, 3, None, 0, 1]


def test_compose_starts_the_first_services_and_stops_the_last_first() -> None:
    services = ["vllm-0", "vllm-1", "vllm-2"]
    assert compose_commands(services, 3) == [["start", s] for s in services]
    assert compose_commands(services, 1) == [
        ["start", "vllm-0"],
        ["stop", "vllm-2"],
        ["stop", "vllm-1"],
    ]
    assert compose_commands(services, 0)[0] == ["stop", "vllm-2"]


class RecordedScale:
    """A replica set that records each floor it is asked for and stops the loop after two."""

    def __init__(self, stop: threading.Event) -> None:
        self.asked: list[int] = []
        self.stop = stop

    def scale_to(self, replicas: int) -> None:
        self.asked.append(replicas)
        if len(self.asked) == 2:
            self.stop.set()


def test_follow_scales_at_each_change_until_stopped() -> None:
    ticks = iter([0, 0, 1, 1, 2])
    stop = threading.Event()
    scale = RecordedScale(stop)
    follow(ScheduleFollower((2, 2, 0), hour_now=lambda: next(ticks)), scale, stop, poll_s=0)
    assert scale.asked == [2, 0]
