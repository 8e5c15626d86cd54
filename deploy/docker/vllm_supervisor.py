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

A hung engine can keep ``/health`` at 200 (it reports only an engine already marked dead),
so each probe that succeeds also reads ``--metrics-url`` (default: ``/metrics`` beside the
health URL): when requests are running and none of vLLM's progress marks (tokens generated,
prompt tokens, KV cache use, its start time) has moved for ``--stall-after`` seconds
(default 120; 0 turns it off), the engine is stopped the same way and the supervisor exits
with :data:`EXIT_UNHEALTHY`. The rule is ``launcher/supervision/progress.py``'s, copied
below between its markers (this file runs in the stock vLLM image, without the kit).
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
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

EXIT_UNHEALTHY = 75  # EX_TEMPFAIL: try again (the container is restarted)
STALL_AFTER_S = 120.0  # launcher/supervision/progress.py's STALL_AFTER_S


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


# -- rule: begin (a copy of launcher/supervision/progress.py's block; a test keeps them equal) --
RUNNING_METRIC = "vllm:num_requests_running"
PROGRESS_METRICS = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:kv_cache_usage_perc",
    "process_start_time_seconds",
)


@dataclass(frozen=True)
class MetricsSample:
    """One ``/metrics`` answer, reduced: requests running, and the progress marks."""

    running: float
    marks: tuple[float, ...]


@dataclass(frozen=True)
class Progress:
    """The last marks seen, and since when the engine is known to be fine (idle or moving)."""

    marks: tuple[float, ...] | None = None
    since: float = 0.0


def parse_metrics(text: str) -> MetricsSample:
    """Prometheus text exposition -> :class:`MetricsSample`, each series summed over its
    labels (a metric not exported counts 0: an engine without stats is never stalled)."""
    wanted = (RUNNING_METRIC, *PROGRESS_METRICS)
    totals = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if rest:
            rest = rest.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        name = name.strip()
        if name in totals:
            try:
                totals[name] += float(rest.split()[0])
            except (IndexError, ValueError):
                continue
    return MetricsSample(totals[RUNNING_METRIC], tuple(totals[m] for m in PROGRESS_METRICS))


def judge_progress(
    progress: Progress, sample: MetricsSample | None, now: float, stall_after_s: float
) -> tuple[Progress, bool]:
    """The state after one sample taken at ``now`` (``None``: ``/metrics`` did not answer,
    which is ``/health``'s to judge), and whether the engine is stalled: requests running
    and no mark moved (up, or down after a restart) for ``stall_after_s`` seconds."""
    if sample is None:
        return progress, False
    if progress.marks is None or sample.running <= 0 or sample.marks != progress.marks:
        return Progress(sample.marks, now), False
    return progress, now - progress.since >= stall_after_s


# -- rule: end --


def probe(url: str, timeout_s: float) -> bool:
    """One GET: serving means a 200 within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, reset, timed out, HTTP errors (URLError, HTTPError)
        return False


def sample_metrics(url: str, timeout_s: float) -> MetricsSample | None:
    """One GET of vLLM's ``/metrics``, reduced by the rule; ``None`` when it did not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                return None
            return parse_metrics(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def metrics_url_beside(health_url: str) -> str:
    """``http://host:port/metrics`` for ``http://host:port/health``."""
    parts = urllib.parse.urlsplit(health_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


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
    *,
    metrics_url: str | None = None,
    stall_after_s: float = STALL_AFTER_S,
) -> int:
    """Run ``command`` until it exits, is told to stop, or stops serving (``url`` fails, or
    ``metrics_url`` shows no progress for ``stall_after_s``; 0: never); the exit code."""
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
    progress = Progress()
    metrics_url = metrics_url or metrics_url_beside(url)
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
        ok = probe(url, policy.timeout_s)
        state, stop = judge(state, ok, clock() - started, policy)
        reason = f"{state.failures} probes of {url} failed in a row"
        if ok and stall_after_s > 0:
            sample = sample_metrics(metrics_url, policy.timeout_s)
            progress, stop = judge_progress(progress, sample, clock(), stall_after_s)
            if stop and sample is not None:
                reason = (
                    f"no progress for {clock() - progress.since:.0f} s with "
                    f"{sample.running:g} request(s) running ({metrics_url})"
                )
        if stop and not stopping:  # a stop signal during the probe wins: drain
            log(
                f"vllm_supervisor: {reason}: "
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
    parser.add_argument(
        "--metrics-url", default=None, help="default: /metrics beside the health URL"
    )
    parser.add_argument("--stall-after", type=float, default=STALL_AFTER_S, help="0: off")
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
    return supervise(
        command,
        options.health_url,
        policy,
        kill_grace_s=options.kill_grace,
        metrics_url=options.metrics_url,
        stall_after_s=options.stall_after,
    )


if __name__ == "__main__":
    sys.exit(main())
