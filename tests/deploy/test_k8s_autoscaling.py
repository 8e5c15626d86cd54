"""The autoscalers' queries are real PromQL over real metric names: ``promtool test rules``.

Each KEDA trigger (and each HPA metric, through the prometheus-adapter rule that serves it)
becomes a recording rule of the replicas it asks for, ``ceil(signal / target)`` -- KEDA's and
the HPA's rule for ``AverageValue`` targets. Synthetic series for two replicas, labelled as
the PodMonitors label them, hold each signal below its target for five minutes, then above:
the rule asks for more than the two replicas only in the second half.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_k8s_render import K8S_DIR, built
from tests.deploy.test_prometheus import promtool

pytestmark = pytest.mark.integration

REPLICAS = 2
KEDA_OVERLAYS = ["rtx4090-llama-3.1-8b-awq", "rtx4090-llama-3.1-8b-awq-zero"]
KEDA_OVERLAYS += ["l40s-qwen2.5-14b-awq", "h200-llama-3.1-70b-fp8"]
HPA_OVERLAY = "rtx4090-llama-3.1-8b-awq-hpa"


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == "vllm"]
    return found


def keda_signals(overlay: str) -> list[tuple[str, str, int]]:
    """(name, query, per-replica target) of each trigger."""
    spec = find(built(overlay), "ScaledObject")["spec"]
    return [
        (t["name"], t["metadata"]["query"], int(t["metadata"]["threshold"]))
        for t in spec["triggers"]
    ]


def hpa_signals(overlay: str) -> list[tuple[str, str, int]]:
    """The HPA's Pods metrics, as the adapter's metricsQuery computes them per pod."""
    values = yaml.safe_load(
        (K8S_DIR / "overlays" / overlay / "prometheus-adapter-values.yaml").read_text()
    )
    rules = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    found = []
    for metric in find(built(overlay), "HorizontalPodAutoscaler")["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        rule = rules[name]
        series = rule["seriesQuery"].split("{")[0]
        per_pod = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="vkit",pod=~"vllm-0|vllm-1"')
            .replace("<<.GroupBy>>", "pod")
        )
        target = int(metric["pods"]["target"]["averageValue"])
        found.append((name, f"sum({per_pod})", target))
    return found


def metric_of(query: str) -> tuple[str, dict[str, str]]:
    match = re.search(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", query)
    assert match, query
    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
    return match.group(1), labels


def series_for(query: str, target: int) -> list[dict[str, str]]:
    """Two pods: ``target - 1`` each for 5 minutes, then ``target + 1`` each."""
    metric, labels = metric_of(query)
    low, high = max(target - 1, 0), target + 1
    found = []
    for i in range(REPLICAS):
        pod = {"namespace": "vkit", "job": "vllm", "pod": f"vllm-{i}", **labels}
        text = ",".join(f'{k}="{v}"' for k, v in pod.items())
        found.append({"series": f"{metric}{{{text}}}", "values": f"{low}x5 {high}x5"})
    return found


def rule_name(name: str) -> str:
    return "vkit:k8s_desired_replicas:" + name.replace("-", "_")


def write_rule_tests(signals: list[tuple[str, str, int]], root: Path) -> Path:
    rules = [{"record": rule_name(n), "expr": f"ceil(({q}) / {t})"} for n, q, t in signals]
    (root / "scaling.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "scaling", "rules": rules}]})
    )
    tests = []
    for name, query, target in signals:
        low, high = max(target - 1, 0), target + 1
        scale_out = f"{rule_name(name)} > {REPLICAS}"
        tests.append(
            {
                "interval": "1m",
                "input_series": series_for(query, target),
                "promql_expr_test": [
                    {"expr": scale_out, "eval_time": "2m", "exp_samples": []},
                    {
                        "expr": rule_name(name),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": rule_name(name), "value": math.ceil(REPLICAS * low / target)}
                        ],
                    },
                    {
                        "expr": scale_out,
                        "eval_time": "8m",
                        "exp_samples": [
                            {
                                "labels": rule_name(name),
                                "value": math.ceil(REPLICAS * high / target),
                            }
                        ],
                    },
                ],
            }
        )
    path = root / "scaling.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": ["scaling.rules.yml"], "tests": tests}))
    return path


@pytest.mark.parametrize("overlay", KEDA_OVERLAYS)
def test_keda_triggers_ask_for_more_replicas_only_above_target(
    overlay: str, tmp_path: Path
) -> None:
    signals = keda_signals(overlay)
    assert {name for name, _, _ in signals} >= {"running", "waiting"}
    result = promtool("test", "rules", str(write_rule_tests(signals, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hpa_metrics_ask_for_more_replicas_only_above_target(tmp_path: Path) -> None:
    signals = hpa_signals(HPA_OVERLAY)
    assert [name for name, _, _ in signals] == [
        "vllm_num_requests_running",
        "vllm_num_requests_waiting",
    ]
    result = promtool("test", "rules", str(write_rule_tests(signals, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_query_on_the_wrong_label_does_not_pass(tmp_path: Path) -> None:
    """The check has teeth: a trigger reading another model's series sees nothing."""
    name, query, target = keda_signals(KEDA_OVERLAYS[0])[0]
    wrong = query.replace('model_name="llama-3.1-8b"', 'model_name="other"')
    path = write_rule_tests([(name, query, target)], tmp_path)
    (tmp_path / "scaling.rules.yml").write_text(
        (tmp_path / "scaling.rules.yml").read_text().replace(query, wrong)
    )
    assert promtool("test", "rules", str(path)).returncode != 0
