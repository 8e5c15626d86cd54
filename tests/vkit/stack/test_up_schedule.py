"""``vkit up --schedule``: replicas parked and started again as the floor changes, the
gateway holding while none is ready, and a schedule the stack cannot follow refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from launcher.sizing.capacity import UsageProfile
from launcher.sizing.capacity.schedule import ScheduleError, WeekShape, plan_schedule
from vkit.cli import build_parser
from vkit.commands.up import settings_from_args
from vkit.exit_codes import CliError, exit_code_for
from vkit.stack.processes import ProcessGroup
from vkit.stack.restarts import ReplicaKeeper, RestartPolicy
from vkit.stack.run import ScheduledReplicas, schedule_follower
from vkit.stack.schedule_follower import ScheduleFollower
from vkit.stack.specs import ProcessSpec
from vkit.stack.stack_plan import StackLayout, StackPorts, stack_gateway_settings
from vkit.stack.up_settings import UpSettings

SERVE = "import time; time.sleep(600)"
PORTS = StackPorts(gateway=8000, nginx=9001, replicas=(9101, 9102), redis=None)


def week_file(tmp_path: Path) -> Path:
    """The B2B week at 15 users a replica: 3 at peak, 1 at night, 0 at weekends."""
    schedule = plan_schedule(
        UsageProfile(daily_users=100_000),
        WeekShape(weekend_share=0.0, allow_zero=True),
        users_per_replica=15,
        usd_per_replica_hour=0.39,
        option="1x rtx4090",
    )
    path = tmp_path / "week.json"
    path.write_text(schedule.model_dump_json())
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.integration
def test_a_parked_replica_stays_down_until_the_schedule_asks_for_it(tmp_path: Path) -> None:
    lines: list[str] = []
    clock = Clock()
    with ProcessGroup() as group:
        for name in ("replica-0", "replica-1"):
            group.start(ProcessSpec(name, (sys.executable, "-c", SERVE), tmp_path / f"{name}.log"))
        keeper = ReplicaKeeper(
            group, lines.append, RestartPolicy(first_delay_s=1), clock=clock, ready=lambda p: True
        )
        first, second = group.running
        keeper.scale_to(1, grace_s=10)
        assert second.exit_code() is not None and first.exit_code() is None
        clock.now += 3600  # far past any restart delay: a crash would have been restarted
        keeper.step()
        keeper.step()
        assert group.running[1] is second and second.exit_code() is not None
        keeper.scale_to(2, grace_s=10)
        again = group.running[1]
        assert again is not second and again.exit_code() is None
        keeper.step()
        assert lines == [
            "vkit up: replica-1: stopped by the schedule",
            "vkit up: replica-1: started by the schedule",
            "vkit up: replica-1 is ready again (attempt 0)",
        ]
        keeper.scale_to(0, grace_s=10)
        assert all(p.exit_code() is not None for p in group.running)


def scheduled(tmp_path: Path, **more: object) -> UpSettings:
    return UpSettings(schedule=week_file(tmp_path), routing="aware", **more)  # type: ignore[arg-type]


def test_the_gateway_holds_and_reads_the_replicas_file_only_under_a_schedule(
    tmp_path: Path,
) -> None:
    layout = StackLayout(tmp_path / "run")
    plain = stack_gateway_settings(UpSettings(routing="aware"), layout, PORTS)
    assert plain.hold.max_wait is None and plain.discovery.file is None
    short = stack_gateway_settings(scheduled(tmp_path, startup_timeout_s=200), layout, PORTS)
    assert short.hold.max_wait == 200
    assert short.discovery.file == layout.replicas_file and short.discovery.interval == 1.0
    long_start = stack_gateway_settings(scheduled(tmp_path), layout, PORTS)  # 600 s budget
    assert long_start.hold.max_wait == 300  # half the gateway's whole-request timeout


def test_a_schedule_routes_aware(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--schedule routes aware"):
        UpSettings(schedule=week_file(tmp_path), routing="round_robin")
    args = build_parser("up").parse_args(["up", "--schedule", str(week_file(tmp_path))])
    assert settings_from_args(args).routing == "aware"


class Keeper:
    """What the schedule asked the keeper for, and the replicas file when it was asked."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.asked: list[tuple[int, list[str]]] = []

    def scale_to(self, replicas: int, grace_s: float) -> None:
        self.asked.append((replicas, self.file.read_text().split()))


def test_a_replica_leaves_the_replicas_file_before_it_is_stopped(tmp_path: Path) -> None:
    file = tmp_path / "replicas.txt"
    urls = ("http://127.0.0.1:9101", "http://127.0.0.1:9102")
    hour, slept, said = [0], [], []
    run = ScheduledReplicas(
        ScheduleFollower((2, 1, 0, 2), lambda: hour[0]), urls, file, sleep=slept.append
    )
    keeper = Keeper(file)
    for at in range(4):
        hour[0] = at
        run.step(keeper, said.append, 10)  # type: ignore[arg-type]
    assert keeper.asked == [(2, list(urls)), (1, list(urls[:1])), (0, []), (2, list(urls))]
    assert slept == [3.0, 3.0]  # before each stop: the gateway reads the file twice first
    assert said[1] == "vkit up: the schedule asks for 1 replica(s) now"


def test_a_schedule_whose_peak_needs_more_replicas_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        CliError, match=r"^--schedule: its peak needs 3 replicas, --replicas is 2$"
    ) as caught:
        schedule_follower(scheduled(tmp_path, replicas=2))
    assert caught.value.exit_code == 2
    follower = schedule_follower(scheduled(tmp_path, replicas=3))
    assert follower is not None and max(follower.floors) == 3


def test_a_hand_edited_schedule_short_of_an_hour_is_refused(tmp_path: Path) -> None:
    path = week_file(tmp_path)
    data = json.loads(path.read_text())
    data["floors"][10] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(ScheduleError, match="Mon 10:00: 0 replica") as caught:
        schedule_follower(UpSettings(schedule=path, routing="aware", replicas=3))
    assert exit_code_for(caught.value) == 2


def test_a_schedule_is_not_for_a_deployment_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--schedule follows one model"):
        UpSettings(deployment=tmp_path / "d.yaml", routing="aware", schedule=week_file(tmp_path))
