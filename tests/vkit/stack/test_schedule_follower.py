"""The follower's pieces: the hour of the week in the schedule's zone, one report per change,
and the compose commands for a floor."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from vkit.render.compose_schedule import DRAIN_SETTLE_S
from vkit.stack.schedule_follower import (
    ComposeReplicas,
    ScheduleFollower,
    compose_commands,
    follow,
    hour_of_week,
    write_replicas_file,
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


class ComposeLog:
    """Each ``docker compose`` command with the discovery file as it was when the command ran,
    and each pause, in order."""

    def __init__(self, replicas_file: Path) -> None:
        self.replicas_file = replicas_file
        self.events: list[tuple[str, ...]] = []

    def run(self, argv: list[str]) -> None:
        listed = self.replicas_file.read_text().split() if self.replicas_file.exists() else []
        self.events.append((*argv[-2:], *listed))

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", str(seconds)))


URLS = {"vllm-0": "http://vllm-0:8000", "vllm-1": "http://vllm-1:8000"}


def drained(tmp_path: Path) -> tuple[ComposeReplicas, ComposeLog]:
    replicas_file = tmp_path / "replicas" / "replicas.txt"
    replicas_file.parent.mkdir()
    write_replicas_file(replicas_file, list(URLS.values()))
    log = ComposeLog(replicas_file)
    compose = ComposeReplicas(
        tmp_path / "compose.yaml",
        list(URLS),
        replicas_file=replicas_file,
        settle_s=DRAIN_SETTLE_S,
        run=log.run,
        sleep=log.sleep,
    )
    return compose, log


def test_a_replica_leaves_the_gateways_file_and_is_stopped_only_after_two_reads(
    tmp_path: Path,
) -> None:
    compose, log = drained(tmp_path)
    compose.scale_to(1)
    assert log.events == [
        ("start", "vllm-0", URLS["vllm-0"], URLS["vllm-1"]),
        ("sleep", str(DRAIN_SETTLE_S)),  # the gateway reads the file without vllm-1 twice
        ("stop", "vllm-1", URLS["vllm-0"]),  # and only then is it stopped
    ]


def test_a_replica_started_again_joins_the_file_after_its_start(tmp_path: Path) -> None:
    compose, log = drained(tmp_path)
    compose.scale_to(1)
    log.events.clear()
    compose.scale_to(2)
    assert log.events == [
        ("start", "vllm-0", URLS["vllm-0"]),
        ("start", "vllm-1", URLS["vllm-0"]),  # started before the gateway may route to it
    ]
    assert compose.replicas_file.read_text().split() == list(URLS.values())
    log.events.clear()
    compose.scale_to(2)  # nothing leaves: no pause
    assert [event[0] for event in log.events] == ["start", "start"]


def test_the_compose_command_names_the_file_and_project(tmp_path: Path) -> None:
    log: list[list[str]] = []
    compose = ComposeReplicas(
        tmp_path / "compose.yaml", ["vllm-0"], project="drain", run=log.append, sleep=print
    )
    compose.scale_to(1)
    assert log == [
        [
            "docker",
            "compose",
            "-f",
            str(tmp_path / "compose.yaml"),
            "-p",
            "drain",
            "start",
            "vllm-0",
        ]
    ]
