"""ReplicaKeeper: crashed replicas start again with backoff; the stack itself stays up.

Real (tiny Python) child processes; the keeper's clock and readiness check are injected,
so the backoff is stepped through without waiting for it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from vkit.stack.processes import ProcessFailed, ProcessGroup, RunningProcess, tail_lines
from vkit.stack.proctree import is_alive
from vkit.stack.restarts import ReplicaKeeper, RestartPolicy, exit_description
from vkit.stack.specs import ProcessSpec

EXIT_3 = "import sys; print('boom', flush=True); sys.exit(3)"
SERVE = "import time; time.sleep(600)"
WITH_ORPHAN = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
)
print(child.pid, flush=True)
time.sleep(600)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(tmp_path: Path, name: str, code: str) -> ProcessSpec:
    return ProcessSpec(name, (sys.executable, "-c", code), tmp_path / f"{name}.log")


def last(lines: list[str], text: str) -> str:
    """The last line said that contains ``text`` (log lines follow each exit)."""
    return next(line for line in reversed(lines) if text in line)


def wait_exit(process: RunningProcess) -> None:
    process.popen.wait(timeout=30)


@pytest.mark.integration
def test_a_crashed_replica_is_started_again_and_reported(tmp_path: Path) -> None:
    lines: list[str] = []
    clock = Clock()
    ready: set[int] = set()
    with ProcessGroup() as group:
        replica = group.start(spec(tmp_path, "replica-0", EXIT_3))
        group.start(spec(tmp_path, "gateway", SERVE))
        keeper = ReplicaKeeper(
            group, lines.append, RestartPolicy(), clock=clock, ready=lambda p: p.popen.pid in ready
        )
        wait_exit(replica)
        keeper.step()
        assert lines[0] == "vkit up: replica-0 exited (code 3); restarting in 1 s (attempt 1); " + (
            "last log lines:"
        )
        assert "    boom" in lines
        keeper.step()  # not due yet
        assert group.running[0] is replica
        clock.now += 1.0
        keeper.step()
        again = group.running[0]
        assert again.popen.pid != replica.popen.pid and again.name == "replica-0"
        assert lines[-1] == "vkit up: replica-0: started again (attempt 1)"
        # It crashes again before it is ready: twice the delay.
        wait_exit(again)
        keeper.step()
        assert "exited (code 3); restarting in 2 s (attempt 2)" in last(lines, "exited")
        clock.now += 2.0
        keeper.step()
        third = group.running[0]
        third.popen.send_signal(signal.SIGSTOP)  # stays "running" while we look
        ready.add(third.popen.pid)
        keeper.step()
        assert lines[-1] == "vkit up: replica-0 is ready again (attempt 2)"
        third.popen.send_signal(signal.SIGCONT)
        wait_exit(third)
        keeper.step()  # ready in between: the count starts over
        assert "restarting in 1 s (attempt 1)" in last(lines, "exited")
    assert tail_lines(replica.spec.log_path).count("boom") == 3  # one log, appended


@pytest.mark.integration
def test_backoff_doubles_to_its_cap_then_gives_up_without_stopping_the_stack(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    clock = Clock()
    policy = RestartPolicy(first_delay_s=1, max_delay_s=8, max_restarts=6, window_s=600)
    with ProcessGroup() as group:
        group.start(spec(tmp_path, "replica-0", EXIT_3))
        keeper = ReplicaKeeper(group, lines.append, policy, clock=clock, ready=lambda p: False)
        delays = []
        for _ in range(policy.max_restarts):
            wait_exit(group.running[0])
            keeper.step()
            delay = float(last(lines, "exited").split("restarting in ")[1].split(" s")[0])
            delays.append(delay)
            clock.now += delay
            keeper.step()
        assert delays == [1, 2, 4, 8, 8, 8]
        wait_exit(group.running[0])
        keeper.step()  # the 7th exit within the window
        assert "exited (code 3) 7 times within 600 s; not restarting it again" in lines[-1]
        assert lines.count("vkit up: replica-0: started again (attempt 6)") == 1
        pid = group.running[0].popen.pid
        clock.now += 3600
        keeper.step()  # no exception: the stack stays up, the gateway says 503
        assert group.running[0].popen.pid == pid


@pytest.mark.integration
def test_a_dead_front_end_stops_the_stack(tmp_path: Path) -> None:
    with ProcessGroup() as group:
        group.start(spec(tmp_path, "replica-0", SERVE))
        nginx = group.start(spec(tmp_path, "nginx", EXIT_3))
        keeper = ReplicaKeeper(group, lambda _: None, clock=Clock(), ready=lambda p: True)
        wait_exit(nginx)
        with pytest.raises(ProcessFailed, match="nginx exited with code 3"):
            keeper.step()


@pytest.mark.integration
def test_what_a_killed_replica_left_behind_is_killed_before_it_starts_again(
    tmp_path: Path,
) -> None:
    """vkit launch puts vLLM in a session of its own: after vkit launch dies, only the
    tree remembered while it lived still finds vLLM (which holds the port)."""
    with ProcessGroup() as group:
        replica = group.start(spec(tmp_path, "replica-0", WITH_ORPHAN))
        keeper = ReplicaKeeper(group, lambda _: None, clock=Clock(), ready=lambda p: False)
        deadline = time.monotonic() + 10
        while not tail_lines(replica.spec.log_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphan = int(tail_lines(replica.spec.log_path)[0])
        keeper.step()  # remembers the tree
        os.kill(replica.popen.pid, signal.SIGKILL)
        wait_exit(replica)
        assert is_alive(orphan)
        keeper.step()
        deadline = time.monotonic() + 10
        while is_alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(orphan)


def test_exit_descriptions() -> None:
    assert exit_description(1) == "code 1"
    assert exit_description(-9) == "killed by SIGKILL"
    assert RestartPolicy().delay_s(1) == 1 and RestartPolicy().delay_s(10) == 30
