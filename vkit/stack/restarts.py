"""``vkit up`` keeps its replicas running: a replica that exits is started again, with backoff.

    >>> keeper = ReplicaKeeper(group, say, RestartPolicy(first_delay_s=1, max_delay_s=30))
    >>> while True: keeper.step(); time.sleep(1)

Each :meth:`ReplicaKeeper.step` looks at every child once, without blocking for long:

- a front-end process (NGINX, the gateway, Redis) that exits stops the stack
  (:class:`ProcessFailed`): without it nothing is served, and restarting it hides the cause;
- a replica that exits is started again after ``first_delay_s``, doubling up to
  ``max_delay_s`` while it keeps failing, and the count starts over once it is ready again;
  more than ``max_restarts`` exits within ``window_s`` and it is left down, said once --
  the stack stays up either way, and the gateway answers 503 with ``Retry-After`` while no
  replica is ready.

A replica the schedule parks (:meth:`ReplicaKeeper.scale_to`, ``vkit up --schedule``) is
stopped -- it drains -- and not started again until the schedule asks for it.

Every transition is one line on ``say``: "replica-0 exited (code 1); restarting in 2 s
(attempt 2)", "replica-0 is ready again (attempt 2)".
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from vkit.stack.processes import ProcessFailed, ProcessGroup, RunningProcess, tail_lines
from vkit.stack.ready_checks import is_ready

Say = Callable[[str], None]
REPLICA_PREFIX = "replica-"
READY_PROBE_TIMEOUT_S = 1.0  # one step stays short while a replica starts again
LOG_LINES_ON_EXIT = 10


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts of one replica, and when to stop trying."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_restarts: int = 10
    window_s: float = 600.0

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1, 2, ...) in a row."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, attempt - 1))


@dataclass
class _Replica:
    """What the keeper knows of one replica between steps."""

    process: RunningProcess
    attempt: int = 0  # restarts since it was last ready
    due: float | None = None  # when to start it again, while it is down
    starting: bool = False  # restarted, not ready yet
    given_up: bool = False
    parked: bool = False  # stopped by the schedule: not a crash, not restarted
    exits: deque[float] = field(default_factory=deque)


def exit_description(code: int) -> str:
    """``code 3``, or ``killed by SIGKILL`` for Popen's negative codes."""
    if code >= 0:
        return f"code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class ReplicaKeeper:
    """Restarts the group's replicas as they exit; a dead front end stops the stack."""

    def __init__(
        self,
        group: ProcessGroup,
        say: Say,
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        ready: Callable[[RunningProcess], bool] | None = None,
    ) -> None:
        self._group = group
        self._say = say
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._ready = ready or _all_checks_pass
        self._replicas = {
            p.name: _Replica(p) for p in group.running if p.name.startswith(REPLICA_PREFIX)
        }

    def step(self) -> None:
        """One look at every child: raise for a dead front end, tend to the replicas."""
        for process in self._group.exited():
            if not process.name.startswith(REPLICA_PREFIX):
                raise ProcessFailed(
                    process.name,
                    f"exited with {exit_description(process.exit_code() or 0)}",
                    process.spec.log_path,
                )
        now = self._clock()
        self._group.remember_trees()
        for replica in self._replicas.values():
            self._tend(replica, now)

    def _tend(self, replica: _Replica, now: float) -> None:
        if replica.given_up or replica.parked:
            return
        code = replica.process.exit_code()
        if code is not None and replica.due is None:
            self._exited(replica, code, now)
        elif replica.due is not None and now >= replica.due:
            replica.due = None
            replica.starting = True
            replica.process = self._group.restart(replica.process)
            self._say(f"vkit up: {replica.process.name}: started again (attempt {replica.attempt})")
        elif code is None and replica.starting and self._ready(replica.process):
            replica.starting = False
            self._say(f"vkit up: {replica.process.name} is ready again (attempt {replica.attempt})")
            replica.attempt = 0

    def scale_to(self, replicas: int, grace_s: float = 15.0) -> None:
        """Run the first ``replicas`` replicas (in start order) and park the others: the
        last ones are stopped first (each drains for up to ``grace_s``) and a parked one is
        started again only by a later call that asks for it."""
        ordered = list(self._replicas.values())
        for replica in reversed(ordered[replicas:]):
            if replica.parked:
                continue
            replica.parked, replica.due, replica.starting = True, None, False
            if replica.process.exit_code() is None:
                self._group.stop(replica.process, grace_s)
            self._say(f"vkit up: {replica.process.name}: stopped by the schedule")
        for replica in ordered[:replicas]:
            if not replica.parked:
                continue
            replica.parked, replica.given_up, replica.attempt = False, False, 0
            replica.exits.clear()
            replica.process = self._group.restart(replica.process)
            replica.starting = True
            self._say(f"vkit up: {replica.process.name}: started by the schedule")

    def _exited(self, replica: _Replica, code: int, now: float) -> None:
        policy, name = self._policy, replica.process.name
        self._group.reap(replica.process)  # its engine must let go of the port
        replica.exits.append(now)
        while replica.exits and now - replica.exits[0] > policy.window_s:
            replica.exits.popleft()
        how = exit_description(code)
        if len(replica.exits) > policy.max_restarts:
            replica.given_up = True
            self._say(
                f"vkit up: {name} exited ({how}) {len(replica.exits)} times within "
                f"{policy.window_s:g} s; not restarting it again (log: "
                f"{replica.process.spec.log_path}). The gateway answers 503 while no replica "
                "is ready; Ctrl-C stops the stack."
            )
            return
        replica.attempt += 1
        delay = policy.delay_s(replica.attempt)
        replica.due = now + delay
        self._say(
            f"vkit up: {name} exited ({how}); restarting in {delay:g} s "
            f"(attempt {replica.attempt}); last log lines:"
        )
        for line in tail_lines(replica.process.spec.log_path, LOG_LINES_ON_EXIT):
            self._say(f"    {line}")


def _all_checks_pass(process: RunningProcess) -> bool:
    return all(is_ready(check, READY_PROBE_TIMEOUT_S) for check in process.spec.ready)
