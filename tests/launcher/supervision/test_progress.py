"""The hung-engine rule: requests running and no progress mark moving for ``stall_after_s``."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from launcher.supervision.progress import (
    PROGRESS_METRICS,
    MetricsSample,
    Progress,
    judge_progress,
    liveness,
    parse_metrics,
)
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread

REPO = Path(__file__).resolve().parents[3]
STALL_AFTER_S = 120.0
LABELS = '{engine="0",model_name="tiny-llama"}'


def sample(running: float, generated: float, prompt: float = 0.0, kv: float = 0.0) -> MetricsSample:
    return MetricsSample(running, (generated, prompt, kv, 1.7e9))


def verdicts(samples: Sequence[tuple[float, MetricsSample | None]]) -> list[bool]:
    """Feed (time, sample) through the rule; the stalled verdict after each."""
    progress, out = Progress(), []
    for now, one in samples:
        progress, stalled = judge_progress(progress, one, now, STALL_AFTER_S)
        out.append(stalled)
    return out


def every_15_s(until: float) -> Iterator[float]:
    return (15.0 * i for i in range(int(until // 15) + 1))


def test_requests_running_with_flat_counters_past_the_window_is_a_stall() -> None:
    hung = [(t, sample(running=2, generated=500, prompt=900, kv=0.3)) for t in every_15_s(150)]
    result = verdicts(hung)
    assert result[:8] == [False] * 8  # 0..105 s
    assert result[8:] == [True, True, True]  # 120, 135, 150 s: from stall_after_s on


def test_an_idle_engine_with_flat_counters_is_never_stalled() -> None:
    idle = [(t, sample(running=0, generated=500)) for t in every_15_s(3600)]
    assert not any(verdicts(idle))


def test_the_window_starts_when_the_last_mark_moved_not_when_requests_came() -> None:
    samples = [(0.0, sample(0, 100)), (30.0, sample(1, 100)), (60.0, sample(1, 150))]
    samples += [(60.0 + 15 * i, sample(1, 150)) for i in range(1, 9)]  # 75 .. 180 s
    result = verdicts(samples)
    assert result.index(True) == len(samples) - 1  # at 180 s: 120 s after the last token


def test_a_long_prefill_that_only_fills_the_kv_cache_is_progress() -> None:
    """No token for 10 minutes (vLLM emits nothing for a partial prefill), but each chunk's
    KV blocks move the cache use."""
    prefill = [(t, sample(1, 0, 0, kv=0.001 * t)) for t in every_15_s(600)]
    assert not any(verdicts(prefill))


def test_prompt_tokens_alone_are_progress() -> None:
    prefills = [(t, sample(4, 100, prompt=1000 + t)) for t in every_15_s(600)]
    assert not any(verdicts(prefills))


def test_a_slow_long_generation_is_progress() -> None:
    """One token every 10 s (a huge model on a slow box) is slow, not stalled."""
    slow = [(t, sample(1, t // 10)) for t in every_15_s(900)]
    assert not any(verdicts(slow))


def test_a_counter_reset_after_a_restart_is_not_a_stall() -> None:
    before = [(t, sample(3, 5000, 9000)) for t in every_15_s(105)]  # flat for 105 s
    after = [(120.0, sample(3, 0, 0)), (135.0, sample(3, 0, 0))]  # a new engine, from 0
    result = verdicts([*before, *after])
    assert not any(result)
    # ... and a new stall is counted from the reset.
    later = [(120.0 + 15 * i, sample(3, 0, 0)) for i in range(2, 10)]  # 150 .. 255 s
    assert verdicts([*before, *after, *later])[-1] is True  # 255 - 120 >= 120


def test_no_metrics_answer_is_not_a_verdict() -> None:
    """A /metrics that does not answer is /health's to judge: no stall, the window kept."""
    samples: list[tuple[float, MetricsSample | None]] = [(0.0, sample(1, 10))]
    samples += [(15.0 * i, None) for i in range(1, 9)]
    samples += [(135.0, sample(1, 10))]
    assert verdicts(samples) == [False] * 9 + [True]


VLLM_METRICS = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{LABELS} 2.0
vllm:num_requests_running{{engine="1",model_name="tiny-llama"}} 1.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{LABELS} 1234.0
vllm:generation_tokens_created{LABELS} 1.7649e+09
vllm:prompt_tokens_total{LABELS} 4321.0
vllm:prompt_tokens_by_source_total{{engine="0",model_name="tiny-llama",source="local_compute"}} 9.0
vllm:prompt_tokens_cached_total{LABELS} 7.0
vllm:kv_cache_usage_perc{LABELS} 0.25
process_start_time_seconds 1.76458e+09
"""


def test_parse_sums_each_metric_over_its_series_and_ignores_lookalikes() -> None:
    parsed = parse_metrics(VLLM_METRICS)
    assert parsed.running == 3.0  # two engines
    assert parsed.marks == (1234.0, 4321.0, 0.25, 1.76458e9)


def test_an_engine_without_stats_reads_as_idle() -> None:
    assert parse_metrics("# nothing here\ngarbage line\n") == MetricsSample(0.0, (0.0,) * 4)


def test_the_standin_exports_what_the_rule_reads() -> None:
    """The stand-in's /metrics has every name the rule reads but the start time (vLLM's
    names: docs/vllm-server.md#metric-names)."""
    exported = set(re.findall(r"^([\w:]+)\{", ScriptedUpstream(Script()).metrics_text(), re.M))
    assert set(PROGRESS_METRICS) - exported == {"process_start_time_seconds"}


def test_the_compose_supervisor_carries_the_rule_unchanged() -> None:
    """vkit/render/vllm_supervisor.py (copied into each compose bundle) runs without the kit:
    its copy of the rule block must equal the module's (copy the block between the
    ``# -- rule:`` markers over)."""

    def block(path: Path) -> str:
        text = path.read_text()
        begin = text.index("\n", text.index("# -- rule: begin"))
        return text[begin : text.index("# -- rule: end --")]

    module = block(REPO / "launcher" / "supervision" / "progress.py")
    script = block(REPO / "vkit" / "render" / "vllm_supervisor.py")
    assert "def judge_progress(" in module
    assert script == module


# -- the liveness probe's logic (the Kubernetes exec probe runs this file), in-process ---------


@pytest.fixture
def replica() -> Iterator[ScriptedUpstream]:
    with standin_in_thread(Script(running=0)) as upstream:
        yield upstream


def probe(replica: ScriptedUpstream, state: Path, now: float) -> bool:
    alive, _ = liveness(
        f"{replica.url}/health", f"{replica.url}/metrics", state, STALL_AFTER_S, now=now
    )
    return alive


def test_liveness_keeps_its_window_between_probes(
    replica: ScriptedUpstream, tmp_path: Path
) -> None:
    state = tmp_path / "progress.json"
    replica.script.hung = True
    assert probe(replica, state, now=1000.0)
    assert probe(replica, state, now=1100.0)
    assert not probe(replica, state, now=1120.0)  # 120 s of the same marks, running
    replica.script.hung = False  # back, and idle: fine again at once
    assert probe(replica, state, now=1130.0)


def test_liveness_of_a_generating_replica(replica: ScriptedUpstream, tmp_path: Path) -> None:
    state = tmp_path / "progress.json"
    replica.script.running = 1
    for minute in range(5):
        replica.script.generation_tokens_total += 30
        assert probe(replica, state, now=60.0 * minute)


def test_liveness_fails_when_health_does(replica: ScriptedUpstream, tmp_path: Path) -> None:
    replica.script.health_status = 503
    alive, reason = liveness(
        f"{replica.url}/health", f"{replica.url}/metrics", tmp_path / "s.json", 120.0
    )
    assert not alive and "503" in reason
