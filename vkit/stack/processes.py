"""A supervisor for a group of processes: start, wait until ready, stop them all.

Every child starts in its own process group, in vkit's own session, with stdout and
stderr going to its log file. Not in a session of its own: where the kernel schedules by
session (autogroup, ``/proc/sys/kernel/sched_autogroup_enabled``), a session is a share of
the CPUs apart, and on a 2-CPU machine a generating vLLM replica's session held both CPUs for
up to 4.6 s while the gateway's process waited, runnable
(docs/vllm-server.md#one-scheduling-group). Readiness waits are bounded; a child that exits
or does not get ready in time raises ``ProcessFailed`` with the last lines of its log.
``stop_all`` asks each stop tier in turn to stop, waits up to a grace period, then
SIGKILLs the whole process group, so that grandchildren (vLLM's engine core) go too.
A child that died on its own can be started again in its place (``reap`` what it left
behind, then ``restart``): :mod:`vkit.stack.restarts` does that for the replicas.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vkit.exit_codes import CliError
from vkit.stack.proctree import descendants, kill_all
from vkit.stack.ready_checks import is_ready
from vkit.stack.specs import ProcessSpec

TAIL_LINES = 20


class ProcessFailed(CliError):
    """A child exited or never got ready; the message names it and quotes its log."""

    def __init__(self, name: str, cause: str, log_path: Path) -> None:
        tail = "\n".join(f"    {line}" for line in tail_lines(log_path))
        detail = f"\n  last lines of {log_path}:\n{tail}" if tail else ""
        super().__init__(f"{name} {cause}{detail}")
        self.name = name
        self.cause = cause


def tail_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    """The last ``count`` lines of a text file; empty if it is missing."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=count)]
    except OSError:
        return []


@dataclass
class RunningProcess:
    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    # Its descendants when last looked at (``remember_trees``): what to kill once it has
    # died, when they can no longer be found from its pid.
    tree: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    def exit_code(self) -> int | None:
        return self.popen.poll()


ProgressFn = Callable[[Sequence[str], float], None]


class ProcessGroup:
    """Children started together and stopped together (also on errors: use ``with``)."""

    def __init__(
        self,
        *,
        base_env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_interval_s: float = 0.5,
    ) -> None:
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self.running: list[RunningProcess] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(self, spec: ProcessSpec) -> RunningProcess:
        process = self._spawn(spec)
        self.running.append(process)
        return process

    def restart(self, process: RunningProcess) -> RunningProcess:
        """Start ``process``'s spec again in its place (it has exited); its log goes on."""
        self.reap(process)
        process.log.close()
        fresh = self._spawn(process.spec)
        self.running[self.running.index(process)] = fresh
        return fresh

    def stop(self, process: RunningProcess, grace_s: float = 15.0) -> None:
        """Stop one child as :meth:`stop_all` stops each (its stop signal, SIGKILL after
        ``grace_s``); it stays in the group, exited, for :meth:`restart`."""
        tree = process.tree | _live_tree(process)
        _signal_leader(process, process.spec.stop_signal)
        _wait_until(process, self._clock() + grace_s, self._clock)
        _kill_group(process)
        kill_all(tree)
        process.tree = set()

    def reap(self, process: RunningProcess) -> None:
        """Kill what an exited child left behind (its process group, its last known tree)."""
        if process.exit_code() is None:
            raise ValueError(f"{process.name} is still running")
        _kill_group(process)
        kill_all(process.tree)
        process.tree = set()

    def remember_trees(self) -> None:
        """Note each running child's descendants, for :meth:`reap` after it dies."""
        for process in self.running:
            if process.exit_code() is None:
                process.tree = descendants(process.popen.pid)

    def _spawn(self, spec: ProcessSpec) -> RunningProcess:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = spec.log_path.open("ab")
        try:
            popen = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self._base_env, **spec.env},
                process_group=0,
            )
        except OSError as exc:
            log.close()
            raise CliError(f"{spec.name}: cannot start {spec.argv[0]}: {exc.strerror}") from exc
        return RunningProcess(spec, popen, log)

    def wait_ready(
        self,
        processes: Sequence[RunningProcess],
        timeout_s: float,
        on_progress: ProgressFn | None = None,
        progress_every_s: float = 5.0,
    ) -> None:
        """Return once every check of every process passes; raise ``ProcessFailed`` else."""
        started = self._clock()
        pending = list(processes)
        last_report = started
        while pending:
            for process in list(pending):
                code = process.exit_code()
                if code is not None:
                    raise ProcessFailed(
                        process.name, f"exited with code {code}", process.spec.log_path
                    )
                if all(is_ready(check) for check in process.spec.ready):
                    pending.remove(process)
            if not pending:
                return
            now = self._clock()
            if now - started > timeout_s:
                process = pending[0]
                cause = f"was not ready after {timeout_s:.0f} s"
                raise ProcessFailed(process.name, cause, process.spec.log_path)
            if on_progress is not None and now - last_report >= progress_every_s:
                on_progress([p.name for p in pending], now - started)
                last_report = now
            time.sleep(self._poll_interval_s)

    def exited(self) -> list[RunningProcess]:
        """Children whose main process has exited."""
        return [p for p in self.running if p.exit_code() is not None]

    def stop_all(self, grace_s: float = 15.0) -> None:
        """Stop every child, tier by tier; nothing any of them started is left afterwards."""
        for tier in sorted({p.spec.stop_tier for p in self.running}):
            members = [p for p in self.running if p.spec.stop_tier == tier]
            trees = {p.name: p.tree | _live_tree(p) for p in members}
            for process in members:
                _signal_leader(process, process.spec.stop_signal)
            deadline = self._clock() + grace_s
            for process in members:
                _wait_until(process, deadline, self._clock)
                _kill_group(process)
                kill_all(trees[process.name] | descendants(process.popen.pid))
                process.log.close()
        self.running.clear()


def _live_tree(process: RunningProcess) -> set[int]:
    """Descendants of a child still running (a dead one's pid may belong to another now)."""
    return descendants(process.popen.pid) if process.exit_code() is None else set()


def _signal_leader(process: RunningProcess, signum: int) -> None:
    if process.exit_code() is None:
        with contextlib.suppress(ProcessLookupError):
            process.popen.send_signal(signum)


def _wait_until(process: RunningProcess, deadline: float, clock: Callable[[], float]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.popen.wait(timeout=max(0.0, deadline - clock()))


def _kill_group(process: RunningProcess) -> None:
    """SIGKILL the child's process group (it is the group leader) and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait()
