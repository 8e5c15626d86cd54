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
``--failures 0`` turns the stopping off: probes then only tell whether the engine served
(Kubernetes, whose kubelet probes the engine itself).

Start-up healing, as ``vkit launch`` does it: vLLM's output passes through the supervisor
(its last 64 KiB kept); when vLLM exits non-zero before it ever served and that output holds
one of the start-up memory errors ``launcher/supervision/healing.py`` corrects (the context
is longer than the KV cache holds; another process holds GPU memory), the supervisor starts
it again with the corrected ``--max-model-len`` or ``--gpu-memory-utilization`` and says why,
at most ``--max-heals`` times (default 2; 0: off). The rule is copied below between its
markers too. The correction lives as long as the supervisor: a restarted container starts
from its rendered flags and heals again.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO

EXIT_UNHEALTHY = 75  # EX_TEMPFAIL: try again (the container is restarted)
STALL_AFTER_S = 120.0  # launcher/supervision/progress.py's STALL_AFTER_S
MAX_HEALS = 2  # as `vkit launch` (launcher/supervision/launch_spec.py's max_restarts)
TAIL_BYTES = 64 * 1024  # the engine's last output, read for a healable start-up error


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
    stop = 0 < policy.failures <= failures  # 0: probes only tell whether it served
    return ProbeState(served=state.served, failures=failures), stop


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


# -- healing rule: begin (launcher/supervision/healing.py's block; a test keeps them equal) --
# New wording (vLLM >= 0.6): "... Based on the available memory, the estimated maximum
# model length is 32768. ..."
_ESTIMATED_MAX_LEN = re.compile(r"estimated maximum model length is (\d+)")
# Old wording: "The model's max seq len (X) is larger than the maximum number of tokens
# that can be stored in KV cache (Y)."
_OLD_MAX_SEQ_LEN = re.compile(
    r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored "
    r"in KV cache \((\d+)\)"
)
# "Free memory on device cuda:0 (10.5/23.5 GiB) on startup is less than desired GPU memory
# utilization (0.92, 21.6 GiB)." (older releases omit the device name)
_FREE_MEMORY = re.compile(
    r"Free memory on device[^(]*\(([\d.]+)/([\d.]+) GiB\)[^(]*?"
    r"less than desired GPU memory utilization \(([\d.]+)"
)
# Headroom left for the other process's growth when lowering the utilization.
UTILIZATION_HEADROOM = 0.02
MIN_UTILIZATION = 0.05


def parse_max_model_len_hint(log: str) -> int | None:
    """The max_model_len vLLM says would fit, from either wording; None if absent."""
    found = _ESTIMATED_MAX_LEN.findall(log)
    if found:
        return int(found[-1])
    old = _OLD_MAX_SEQ_LEN.findall(log)
    if old:
        return int(old[-1][1])
    return None


def parse_free_memory(log: str) -> tuple[float, float, float] | None:
    """(free GiB, total GiB, wanted utilization) from the free-memory error; None if absent."""
    found = _FREE_MEMORY.findall(log)
    if not found:
        return None
    free, total, wanted = found[-1]
    return float(free), float(total), float(wanted)


def lowered_utilization(free_gib: float, total_gib: float) -> float:
    """The fraction of the card that is free now, less headroom, rounded down to 0.01."""
    fraction = free_gib / total_gib - UTILIZATION_HEADROOM
    return math.floor(fraction * 100) / 100


def correction(
    max_model_len: int | None, utilization: float | None, log: str
) -> tuple[str, str, str] | None:
    """The one flag to change after the start-up failure in ``log``, as (flag without its
    dashes, new value, reason), for an engine started with ``max_model_len`` and
    ``utilization`` (None: vLLM's default); None when there is nothing to heal."""
    hint = parse_max_model_len_hint(log)
    if hint is not None and hint > 0 and (max_model_len is None or hint < max_model_len):
        reason = (
            f"the KV cache cannot hold one request of max_model_len "
            f"{max_model_len or 'default'}: vLLM estimates {hint} fits, "
            f"retrying with --max-model-len {hint}"
        )
        return "max-model-len", str(hint), reason
    free = parse_free_memory(log)
    if free is not None:
        free_gib, total_gib, wanted = free
        lowered = lowered_utilization(free_gib, total_gib)
        if MIN_UTILIZATION <= lowered < (utilization or wanted):
            reason = (
                f"only {free_gib}/{total_gib} GiB is free on the GPU (another process "
                f"holds memory): retrying with --gpu-memory-utilization {lowered}"
            )
            return "gpu-memory-utilization", str(lowered), reason
    return None


# -- healing rule: end --


def flag_value(command: Sequence[str], flag: str) -> str | None:
    """The value the last ``--flag V`` or ``--flag=V`` in ``command`` gives; None if absent."""
    value = None
    for i, token in enumerate(command):
        if token == f"--{flag}" and i + 1 < len(command):
            value = command[i + 1]
        elif token.startswith(f"--{flag}="):
            value = token.split("=", 1)[1]
    return value


def with_flag(command: Sequence[str], flag: str, value: str) -> list[str]:
    """``command`` with every ``--flag`` (and its value) removed and ``--flag value`` added."""
    kept: list[str] = []
    skip = False
    for token in command:
        if skip:
            skip = False
        elif token == f"--{flag}":
            skip = True
        elif not token.startswith(f"--{flag}="):
            kept.append(token)
    return [*kept, f"--{flag}", value]


def healed_command(command: Sequence[str], log: str) -> tuple[list[str], str] | None:
    """The command corrected for the start-up failure in ``log`` (the rule above), and why."""
    max_len, utilization = (
        flag_value(command, "max-model-len"),
        flag_value(command, "gpu-memory-utilization"),
    )
    change = correction(
        int(max_len) if max_len and max_len.isdigit() else None,
        float(utilization) if utilization and _is_number(utilization) else None,
        log,
    )
    if change is None:
        return None
    flag, value, reason = change
    return with_flag(command, flag, value), reason


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Tail:
    """Copies the engine's output to ours as it comes and keeps its last ``limit`` bytes."""

    def __init__(self, source: IO[bytes], sink: IO[bytes], limit: int = TAIL_BYTES) -> None:
        self._source, self._sink, self._limit = source, sink, limit
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._source:
            while chunk := os.read(self._source.fileno(), 65536):
                self._kept += chunk
                del self._kept[: max(0, len(self._kept) - self._limit)]
                with contextlib.suppress(OSError, ValueError):  # our stdout went away
                    self._sink.write(chunk)
                    self._sink.flush()

    def text(self) -> str:
        """What was kept, once the engine's output has ended (or after a few seconds)."""
        self._thread.join(timeout=5.0)
        return self._kept.decode("utf-8", "replace")


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
    max_heals: int = MAX_HEALS,
    output: IO[bytes] | None = None,
) -> int:
    """Run ``command`` until it exits, is told to stop, or stops serving (``url`` fails, or
    ``metrics_url`` shows no progress for ``stall_after_s``; 0: never); the exit code.

    An engine that fails before it ever served, with a start-up error the healing rule
    corrects, is started again with the corrected flag (at most ``max_heals`` times). Its
    output goes to ``output`` (default: our stdout) as it comes."""
    stopping: list[int] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        if children and children[-1].returncode is None:  # not one already reaped
            with contextlib.suppress(ProcessLookupError):
                os.kill(children[-1].pid, signum)  # vLLM itself drains and stops its workers

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    command = list(command)
    sink = output if output is not None else sys.stdout.buffer
    metrics_url = metrics_url or metrics_url_beside(url)
    code = 0
    for heal in range(max_heals + 1):
        if stopping:  # told to stop while a heal was being decided: start nothing more
            return code
        child = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        children.append(child)
        if stopping:  # the signal came between the check and now: it reached the old one
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, stopping[-1])
        assert child.stdout is not None
        tail = Tail(child.stdout, sink)
        code, served = watch(
            child, url, policy, stopping, kill_grace_s, clock, log, metrics_url, stall_after_s
        )
        if code == EXIT_UNHEALTHY or code == 0 or served or stopping:
            return code
        healed = healed_command(command, tail.text())
        if healed is None:
            return code
        if heal == max_heals:
            log(f"vllm_supervisor: giving up after {heal + 1} starts: {healed[1]}")
            return code
        log(f"vllm_supervisor: {healed[1]} (restart {heal + 1}/{max_heals})")
        command = healed[0]
    raise AssertionError("unreachable")  # pragma: no cover


def watch(
    child: subprocess.Popen[bytes],
    url: str,
    policy: Policy,
    stopping: list[int],
    kill_grace_s: float,
    clock: Callable[[], float],
    log: Callable[[str], None],
    metrics_url: str,
    stall_after_s: float,
) -> tuple[int, bool]:
    """Probe one engine until it exits or stops serving: its exit code (:data:`EXIT_UNHEALTHY`
    when we stopped it), and whether it ever served."""
    started = clock()
    state = ProbeState()
    progress = Progress()
    while True:
        try:
            code = child.wait(timeout=policy.interval_s)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            kill_leftovers(child)
            log(f"vllm_supervisor: vLLM exited with {code}")
            return (code if code >= 0 else 128 - code), state.served  # a signal: as a shell says
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
            return EXIT_UNHEALTHY, state.served


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
    parser.add_argument(
        "--max-heals", type=int, default=MAX_HEALS, help="restarts with a corrected flag; 0: off"
    )
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
        max_heals=options.max_heals,
    )


if __name__ == "__main__":
    sys.exit(main())
