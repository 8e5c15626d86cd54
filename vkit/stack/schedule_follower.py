"""Following a replica schedule where no cluster does it: compose, or any set of replicas.

``vkit capacity --schedule-out`` writes the week's floors; :class:`ScheduleFollower` turns
the hour it is into the replicas that should run, and a :class:`ReplicaSet` makes it so. On
compose, :class:`ComposeReplicas` starts and stops the ``vllm-N`` services (``docker compose
stop`` reaches vLLM through the replica's supervisor, and vLLM drains before it exits); the
gateway holds what arrives while no replica is ready when its ``hold.max_wait`` is set. A
bundle rendered with ``--schedule`` has the gateway read its replicas from a file, which
:class:`ComposeReplicas` rewrites before it stops a replica and after it starts one.

    >>> follower = ScheduleFollower(floors=(2, 0, 1), hour_now=lambda: 1)
    >>> follower.due(), follower.due()          # first the change, then nothing new
    (0, None)
    >>> compose_commands(["vllm-0", "vllm-1"], 1)
    [['start', 'vllm-0'], ['stop', 'vllm-1']]

A replica must leave the gateway's rotation before it stops: vLLM still accepts requests
on open connections while it shuts down and fails them (500, "cannot schedule new futures
after shutdown", measured on vLLM 0.32 CPU). Where the gateway routes to the replicas itself
(``vkit up --schedule``, or a compose bundle rendered with ``--schedule``), the follower
first rewrites the gateway's discovery file without the replica (:func:`write_replicas_file`),
waits for the gateway to read it, and only then stops it; a replica started again goes back
in the file, and the gateway's prober sends it nothing until it is ready.

The clock is injected: :func:`hour_of_week` reads the wall clock in the schedule's zone, a
test passes its own hours.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from launcher.sizing.capacity.schedule import ReplicaSchedule
from vkit.deployment.service_ports import replica_url


class ReplicaSet(Protocol):
    def scale_to(self, replicas: int) -> None: ...


def hour_of_week(zone: str, now: Callable[[], datetime] = datetime.now) -> Callable[[], int]:
    """A clock of hours from Monday 00:00 in ``zone`` (0..167)."""
    tz = ZoneInfo(zone)

    def hour() -> int:
        moment = now().astimezone(tz)
        return moment.weekday() * 24 + moment.hour

    return hour


class ScheduleFollower:
    """The replicas the schedule asks for now, reported once per change."""

    def __init__(self, floors: Sequence[int], hour_now: Callable[[], int]) -> None:
        if not floors:
            raise ValueError("a schedule needs at least one hour")
        self.floors = tuple(floors)
        self.hour_now = hour_now
        self.applied: int | None = None

    def due(self) -> int | None:
        """The floor of this hour when it differs from the last one applied, else None."""
        target = self.floors[self.hour_now() % len(self.floors)]
        if target == self.applied:
            return None
        self.applied = target
        return target


def follow(
    follower: ScheduleFollower, replicas: ReplicaSet, stop: threading.Event, poll_s: float = 30
) -> None:
    """Scale ``replicas`` to each new floor until ``stop`` is set (``vkit schedule``)."""
    while not stop.is_set():
        target = follower.due()
        if target is not None:
            replicas.scale_to(target)
        stop.wait(poll_s)


def compose_commands(services: Sequence[str], replicas: int) -> list[list[str]]:
    """``docker compose`` sub-commands for ``replicas`` of ``services`` running: the first
    ones started, the rest stopped (the last ones go first when the floor falls)."""
    return [["start", name] for name in services[:replicas]] + [
        ["stop", name] for name in reversed(services[replicas:])
    ]


def _run_checked(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


def compose_program(path: str | None = None) -> list[str]:
    """``docker compose`` (Compose v2, the plugin) where the Docker CLI has it, else the
    stand-alone ``docker-compose`` (v1, as some distributions still package it) when that is
    on the path; ``docker compose`` otherwise, so the error names what is missing. ``path``:
    the search path (the process's own ``PATH`` by default)."""
    docker = shutil.which("docker", path=path)
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose", path=path):
        return ["docker-compose"]
    return ["docker", "compose"]


class ComposeReplicas:
    """The ``vllm-N`` services of a compose project, started and stopped with ``docker compose``.

    With ``replicas_file`` (the gateway's discovery file, :mod:`vkit.render.compose_schedule`)
    a floor is applied in three steps: the services that should run are started; the file is
    rewritten to list exactly them (``urls`` maps a service to its base URL); when a replica
    left it, the follower waits ``settle_s`` (the gateway reads the file meanwhile) and only
    then stops the ones above the floor, the last first. ``program`` is the compose command
    (:func:`compose_program`); ``run`` and ``sleep`` are injected."""

    def __init__(
        self,
        compose_file: Path,
        services: Sequence[str],
        *,
        project: str | None = None,
        replicas_file: Path | None = None,
        urls: Callable[[str], str] | None = None,
        settle_s: float = 0.0,
        run: Callable[[list[str]], None] = _run_checked,
        sleep: Callable[[float], object] = time.sleep,
        program: Sequence[str] = ("docker", "compose"),
    ) -> None:
        self.compose_file = compose_file
        self.program = list(program)
        self.services = list(services)
        self.project = project
        self.replicas_file = replicas_file
        self.urls = urls or replica_url
        self.settle_s = settle_s
        self.run = run
        self.sleep = sleep

    def scale_to(self, replicas: int) -> None:
        commands = compose_commands(self.services, replicas)
        starts = [command for command in commands if command[0] == "start"]
        stops = [command for command in commands if command[0] == "stop"]
        for command in starts:
            self._compose(command)
        if self.replicas_file is not None:
            wanted = [self.urls(name) for name in self.services[:replicas]]
            listed = read_replicas_file(self.replicas_file)
            write_replicas_file(self.replicas_file, wanted)
            if set(listed) - set(wanted):  # one left the gateway's list: let it read that
                self.sleep(self.settle_s)
        for command in stops:
            self._compose(command)

    def _compose(self, command: list[str]) -> None:
        project = ["-p", self.project] if self.project else []
        self.run([*self.program, "-f", str(self.compose_file), *project, *command])


def read_replicas_file(path: Path) -> list[str]:
    """The base URLs a discovery file lists (none when there is no file yet)."""
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def write_replicas_file(path: Path, urls: Sequence[str]) -> None:
    """The gateway's discovery file (one base URL a line), replaced whole: a temporary file
    renamed over it, so that the gateway never reads half a list."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(f"{url}\n" for url in urls))
    partial.replace(path)


def follower_for(schedule: ReplicaSchedule) -> ScheduleFollower:
    return ScheduleFollower(schedule.floors, hour_of_week(schedule.timezone))
