"""Run vLLM as a child and exit when it stops serving, so that Docker restarts the container.

Docker marks a container ``unhealthy`` and does nothing else: a hung engine would stay hung.
This file is the vLLM containers' entrypoint (mounted read-only; the standard library only,
as the vLLM image has no vkit):

    python3 vllm_supervisor.py --health-url http://127.0.0.1:8000/health --interval 15 \\
        --timeout 10 --failures 4 --start-period 900 -- python3 -m vllm...api_server FLAGS

It probes ``--health-url`` every ``--interval`` seconds. Failed probes count once one has
succeeded or once ``--start-period`` has passed (what Docker's healthcheck does); after
``--failures`` failed probes in a row it stops vLLM (SIGTERM to its process group, SIGKILL
after ``--kill-grace`` s) and exits with :data:`EXIT_UNHEALTHY`, and ``restart:`` brings the
container back. SIGTERM or SIGINT to the supervisor (``docker stop``) go to vLLM, which
drains (``--shutdown-timeout``); probing stops and the supervisor exits with vLLM's code.
When vLLM exits by itself, so does the supervisor, with its code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

EXIT_UNHEALTHY = 75  # EX_TEMPFAIL: try again (the container is restarted)


@dataclass(frozen=True)
class Policy:
    """When probes count and how many failed ones in a row end the engine."""

    interval_s: float = 15.0
    timeout_s: float = 10.0
    failures: int = 4
    start_period_s: float = 900.0


@dataclass(frozen=True)
class ProbeState:
    """What the probes so far showed: whether one succeeded, and the failures since."""

    served: bool = False
    failures: int = 0


def judge(state: ProbeState, ok: bool, elapsed_s: float, policy: Policy) -> tuple[ProbeState, bool]:
    """The state after one probe (``ok``, ``elapsed_s`` after the start), and whether to
    stop the engine now. A success clears the failures and ends the start period."""
    if ok:
        return ProbeState(served=True, failures=0), False
    if not state.served and elapsed_s < policy.start_period_s:
        return state, False  # still starting: downloading or loading the model
    failures = state.failures + 1
    return ProbeState(served=state.served, failures=failures), failures >= policy.failures


def probe(url: str, timeout_s: float) -> bool:
    """One GET: serving means a 200 within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, reset, timed out, HTTP errors (URLError, HTTPError)
        return False


def stop_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the child's process group (vLLM and its engine workers), SIGKILL after
    ``grace_s``: a hung engine may not honour SIGTERM."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        return


def kill_leftovers(child: subprocess.Popen[bytes]) -> None:
    """Workers that outlived vLLM's own exit."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def supervise(
    command: Sequence[str],
    url: str,
    policy: Policy,
    kill_grace_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> int:
    """Run ``command`` until it exits, is told to stop, or stops serving; the exit code."""
    child = subprocess.Popen(list(command), start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)  # vLLM itself drains and stops its workers

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = clock()
    state = ProbeState()
    while True:
        try:
            code = child.wait(timeout=policy.interval_s)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            kill_leftovers(child)
            log(f"vllm_supervisor: vLLM exited with {code}")
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
        if stopping:
            continue  # draining: wait for vLLM, probe no more
        state, stop = judge(state, probe(url, policy.timeout_s), clock() - started, policy)
        if stop and not stopping:  # a stop signal during the probe wins: drain
            log(
                f"vllm_supervisor: {state.failures} probes of {url} failed in a row: "
                f"stopping vLLM (pid {child.pid}) so that the container is restarted"
            )
            stop_group(child, kill_grace_s)
            kill_leftovers(child)
            return EXIT_UNHEALTHY


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("vllm_supervisor: usage: [options] -- COMMAND...")
    split = list(argv).index("--")
    parser = argparse.ArgumentParser(prog="vllm_supervisor")
    parser.add_argument("--health-url", required=True)
    parser.add_argument("--interval", type=float, default=Policy.interval_s)
    parser.add_argument("--timeout", type=float, default=Policy.timeout_s)
    parser.add_argument("--failures", type=int, default=Policy.failures)
    parser.add_argument("--start-period", type=float, default=Policy.start_period_s)
    parser.add_argument("--kill-grace", type=float, default=10.0)
    options = parser.parse_args(list(argv[:split]))
    command = list(argv[split + 1 :])
    if not command:
        parser.error("no command after --")
    return options, command


def main(argv: Sequence[str] | None = None) -> int:
    options, command = parse_args(sys.argv[1:] if argv is None else argv)
    policy = Policy(
        interval_s=options.interval,
        timeout_s=options.timeout,
        failures=options.failures,
        start_period_s=options.start_period,
    )
    return supervise(command, options.health_url, policy, kill_grace_s=options.kill_grace)


if __name__ == "__main__":
    sys.exit(main())
