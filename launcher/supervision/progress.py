"""Is a serving engine making progress? The one "hung engine" rule, from ``/metrics`` samples.

vLLM's ``/health`` reports only an engine already marked dead: one stuck in a step (a
tensor-parallel collective that never returns) keeps answering 200. What a stuck engine
cannot fake is progress: requests running (``vllm:num_requests_running`` > 0) while none of
its progress marks moves for ``stall_after_s`` seconds is a stall
(docs/vllm-server.md#progress-while-serving). The marks:

- ``vllm:generation_tokens_total``: one more token per running request per decode step;
- ``vllm:prompt_tokens_total``: moves once a prompt's prefill is complete, with its first
  token (vLLM emits no output for a partial prefill);
- ``vllm:kv_cache_usage_perc``: moves each prefill chunk, as the chunk's KV blocks are
  allocated (so a long prefill is progress before its first token);
- ``process_start_time_seconds``: a new engine process.

A counter that goes down (a restarted engine starts again from 0) is a move, not a stall;
an idle engine (nothing running) is never stalled, however flat its counters. Each series
is summed over its labels (one engine per replica in this kit).

Three supervisors ask this one rule: ``vkit launch``'s systemd watchdog
(:mod:`launcher.supervision.sd_notify`), the compose replicas' ``vllm_supervisor.py`` (which
carries a copy of the block between the ``rule`` markers below, kept equal by a test: it
runs in the stock vLLM image, without the kit) and the Kubernetes liveness probe, which runs
this file itself (:func:`liveness_probe_command`; the standard library only, for the same
reason), keeping its state between probes in a small JSON file:

    >>> progress, stalled = judge_progress(Progress(), parse_metrics(text), now, 120.0)

    python3 progress.py --health-url http://127.0.0.1:8000/health \\
        --metrics-url http://127.0.0.1:8000/metrics --state /tmp/vkit-progress.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Twice the gateway's first_byte timeout (60 s: the longest it lets a client wait for a first
# token, so the longest prefill it serves) and well under vLLM's own 300 s step timeout
# (VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS, multi-process tensor parallel only), which would
# otherwise be the first thing to notice; see docs/vllm-server.md#progress-while-serving.
STALL_AFTER_S = 120.0
STATE_PATH = "/tmp/vkit-progress.json"
PROBE_TIMEOUT_S = 4.0

# -- rule: begin (vkit/render/vllm_supervisor.py carries a copy of this block) --
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


def fetch(url: str, timeout_s: float) -> tuple[int | None, str]:
    """One GET: its status (``None`` when nothing answered) and its text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, ValueError):  # refused, reset, timed out
        return None, ""


def load_progress(path: Path) -> Progress:
    try:
        saved = json.loads(path.read_text())
        return Progress(tuple(float(m) for m in saved["marks"]), float(saved["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Progress()


def save_progress(path: Path, progress: Progress) -> None:
    if progress.marks is None:
        return
    with contextlib.suppress(OSError):  # a read-only file system: /health is still judged
        path.write_text(json.dumps({"marks": list(progress.marks), "since": progress.since}))


def liveness(
    health_url: str,
    metrics_url: str,
    state: Path,
    stall_after_s: float,
    *,
    now: float | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[bool, str]:
    """One liveness probe: ``/health`` 200 and no stall (the last sample kept in ``state``)."""
    status, _ = fetch(health_url, timeout_s)
    if status != 200:
        return False, f"{health_url} answered {status or 'nothing'}"
    metrics_status, text = fetch(metrics_url, timeout_s)
    sample = parse_metrics(text) if metrics_status == 200 else None
    moment = time.monotonic() if now is None else now
    progress, stalled = judge_progress(load_progress(state), sample, moment, stall_after_s)
    save_progress(state, progress)
    if stalled:
        running = sample.running if sample is not None else 0
        idle_s = moment - progress.since
        return False, f"no progress for {idle_s:.0f} s with {running:g} request(s) running"
    return True, "alive"


def liveness_probe_command(
    port: int, stall_after_s: float = STALL_AFTER_S, state: str = STATE_PATH
) -> list[str]:
    """This file as an ``exec`` probe (Kubernetes' livenessProbe): ``python3 -c SOURCE``
    with its flags; exit 0 while ``/health`` is 200 and the engine is not stalled."""
    base = f"http://127.0.0.1:{port}"
    flags = ["--health-url", f"{base}/health", "--metrics-url", f"{base}/metrics"]
    flags += ["--state", state, "--stall-after", f"{stall_after_s:g}"]
    return ["python3", "-c", probe_source(), *flags]


def probe_source() -> str:
    """This file's code, its module docstring replaced by a line naming it."""
    source = Path(__file__).read_text()
    docstring = ast.parse(source).body[0]
    lines = source.splitlines(keepends=True)
    return "# vkit: launcher/supervision/progress.py\n" + "".join(lines[docstring.end_lineno :])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="progress", description="vLLM liveness: alive and progressing"
    )
    parser.add_argument("--health-url", required=True)
    parser.add_argument("--metrics-url", required=True)
    parser.add_argument("--state", default=STATE_PATH)
    parser.add_argument("--stall-after", type=float, default=STALL_AFTER_S)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    alive, reason = liveness(
        options.health_url, options.metrics_url, Path(options.state), options.stall_after
    )
    if not alive:
        print(f"vkit liveness: {reason}", file=sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
