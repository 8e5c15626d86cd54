"""A replica schedule as systemd timers that start and stop the ``vllm@`` instances.

Replica ``i`` (the i-th unit given, counting from 0) runs in the hours whose floor is above
``i``. Each replica whose state changes during the week gets a ``-start`` and a ``-stop``
oneshot service (``systemctl start|stop vllm@SET.service``) and a timer for each, with one
``OnCalendar=`` line per hour of the week at which it must change, in the schedule's zone
(``Mon,Tue 09:00:00 Europe/Berlin``: systemd.time(7), "Calendar Events"). Stopping a
``vllm@`` instance drains it (its ``TimeoutStopSec`` is the drain budget); the gateway holds
what finds no replica ready meanwhile.

    >>> sorted(schedule_units(schedule, ["vllm@0.service", "vllm@1.service"]))[:2]
    ['vkit-schedule-vllm-0-start.service', 'vkit-schedule-vllm-0-start.timer']

A timer fires at its hour only: ``Persistent=true`` runs a start or stop missed while the host
was down once it is back.
"""

from __future__ import annotations

from collections.abc import Sequence

from launcher.sizing.capacity.schedule import DAYS, HOURS_PER_WEEK, ReplicaSchedule


def transitions(floors: Sequence[int], replica: int) -> tuple[list[int], list[int]]:
    """Hours of the week at which replica ``replica`` starts, and at which it stops."""
    starts, stops = [], []
    for hour in range(HOURS_PER_WEEK):
        before = floors[hour - 1] > replica  # hour -1: Sunday 23:00, the week wraps
        now = floors[hour] > replica
        if now and not before:
            starts.append(hour)
        elif before and not now:
            stops.append(hour)
    return starts, stops


def on_calendar(hours: list[int], timezone: str) -> list[str]:
    """``OnCalendar=`` values: the hours of the week, days of the same hour on one line."""
    by_hour: dict[int, list[int]] = {}
    for hour in hours:
        by_hour.setdefault(hour % 24, []).append(hour // 24)
    return [
        f"{','.join(DAYS[day] for day in days)} {at:02d}:00:00 {timezone}"
        for at, days in sorted(by_hour.items())
    ]


def _pair(unit: str, action: str, calendar: list[str]) -> dict[str, str]:
    stem = f"vkit-schedule-{unit.removesuffix('.service').replace('@', '-')}-{action}"
    service = (
        "[Unit]\n"
        f"Description={action.capitalize()} {unit} on the replica schedule\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart=/usr/bin/systemctl {action} {unit}\n"
    )
    timer = (
        "[Unit]\n"
        f"Description={action.capitalize()} {unit} at the hours the schedule gives\n\n"
        "[Timer]\n"
        + "".join(f"OnCalendar={line}\n" for line in calendar)
        + "Persistent=true\n\n[Install]\nWantedBy=timers.target\n"
    )
    header = "# Rendered by `vkit schedule systemd`; re-render, do not edit.\n"
    return {f"{stem}.service": header + service, f"{stem}.timer": header + timer}


def schedule_units(schedule: ReplicaSchedule, units: Sequence[str]) -> dict[str, str]:
    """File name -> text of the services and timers that follow ``schedule`` with ``units``
    (``vllm@SET.service``, one per replica, in the order replicas are added)."""
    files: dict[str, str] = {}
    for replica, unit in enumerate(units):
        starts, stops = transitions(schedule.floors, replica)
        if starts:
            files |= _pair(unit, "start", on_calendar(starts, schedule.timezone))
        if stops:
            files |= _pair(unit, "stop", on_calendar(stops, schedule.timezone))
    return files
