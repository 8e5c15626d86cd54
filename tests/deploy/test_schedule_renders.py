"""The replica schedule rendered for Kubernetes (KEDA cron triggers) and systemd (timers),
each checked by its tool and replayed over the week against the floors it came from.

The committed example (``deploy/schedule/b2b-week.json``: 100,000 DAU on RTX 4090s in AWQ,
office hours 09-17, closed weekends) is what ``vkit capacity --schedule-out`` writes, and the
KEDA and systemd examples are what ``vkit schedule keda|systemd`` renders from it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.sizing.capacity.schedule import DAYS, HOURS_PER_WEEK, ReplicaSchedule
from tests.deploy.test_k8s_schemas import validate_object
from tests.deploy.test_systemd import systemd_verify
from vkit.cli import main
from vkit.commands.capacity_schedule import load_schedule

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WEEK = ROOT / "deploy/schedule/b2b-week.json"
KEDA_DIR = ROOT / "deploy/schedule/k8s-b2b"
SYSTEMD_DIR = ROOT / "deploy/schedule/systemd-b2b"
OVERLAY = "../../k8s/overlays/rtx4090-llama-3.1-8b-awq-zero"
UNITS = "vllm@0.service,vllm@1.service"
CAPACITY = ["capacity", "--users", "100000", "--model", "llama-3.1-8b", "--quant", "awq"]
CAPACITY += ["--gpus", "rtx4090", "--tp", "1", "--schedule", "--weekend-share", "0"]
CAPACITY += ["--allow-zero"]


def same_tree(rendered: Path, committed: Path) -> None:
    names = sorted(p.name for p in rendered.iterdir())
    assert names == sorted(p.name for p in committed.iterdir())
    for name in names:
        assert (rendered / name).read_text() == (committed / name).read_text(), (
            f"{committed / name} is stale: re-render it with `vkit schedule`"
        )


def test_the_examples_are_what_the_commands_write(tmp_path: Path) -> None:
    week = tmp_path / "week.json"
    assert main([*CAPACITY, "--schedule-out", str(week)]) == 0
    assert week.read_text() == WEEK.read_text(), "re-render deploy/schedule/b2b-week.json"
    assert (
        main(["schedule", "keda", str(WEEK), "--overlay", OVERLAY, "--out", str(tmp_path / "k")])
        == 0
    )
    same_tree(tmp_path / "k", KEDA_DIR)
    assert (
        main(["schedule", "systemd", str(WEEK), "--units", UNITS, "--out", str(tmp_path / "s")])
        == 0
    )
    same_tree(tmp_path / "s", SYSTEMD_DIR)


# --- Kubernetes -------------------------------------------------------------------------


def built_scaled_object() -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed"
    result = subprocess.run(
        [kubectl, "kustomize", str(KEDA_DIR)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (found,) = [o for o in yaml.safe_load_all(result.stdout) if o["kind"] == "ScaledObject"]
    return found


def last_fire(expression: str, hour: int) -> int:
    """Hours since ``expression`` (``0 H * * D,D``, as rendered) last fired at or before
    ``hour`` of the week, the week repeating."""
    minute, at, dom, month, dows = expression.split()
    assert (minute, dom, month) == ("0", "*", "*"), expression
    fires = [((int(d) - 1) % 7) * 24 + int(at) for d in dows.split(",")]
    return min((hour - fire) % HOURS_PER_WEEK for fire in fires)


def keda_replicas(scaled_object: dict[str, Any], hour: int) -> int:
    """KEDA's rule with the queue triggers idle: the largest active cron trigger's
    desiredReplicas, else minReplicaCount; a window is open from its start to its end."""
    spec = scaled_object["spec"]
    wanted = [spec["minReplicaCount"]]
    for trigger in spec["triggers"]:
        if trigger["type"] != "cron":
            continue
        meta = trigger["metadata"]
        if last_fire(meta["start"], hour) < last_fire(meta["end"], hour):
            wanted.append(int(meta["desiredReplicas"]))
    return max(wanted)


def test_the_built_scaled_object_validates_and_keeps_its_queue_triggers() -> None:
    scaled = built_scaled_object()
    validate_object(scaled)  # KEDA's CRD schema (strict)
    kinds = [t["type"] for t in scaled["spec"]["triggers"]]
    assert kinds.count("prometheus") == 3 and "cron" in kinds
    schedule = load_schedule(WEEK)
    assert scaled["spec"]["maxReplicaCount"] >= schedule.peak_replicas
    for trigger in scaled["spec"]["triggers"]:
        if trigger["type"] == "cron":
            meta = trigger["metadata"]
            assert set(meta) == {"timezone", "start", "end", "desiredReplicas"}
            assert meta["start"] != meta["end"] and meta["timezone"] == schedule.timezone


def test_the_cron_triggers_replay_the_floors() -> None:
    scaled = built_scaled_object()
    floors = load_schedule(WEEK).floors
    assert [keda_replicas(scaled, hour) for hour in range(HOURS_PER_WEEK)] == list(floors)


def test_the_replay_catches_a_wrong_trigger() -> None:
    scaled = built_scaled_object()
    crons = [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "cron"]
    peak = max(crons, key=lambda meta: int(meta["desiredReplicas"]))
    minute, at, rest = peak["end"].split(" ", 2)
    peak["end"] = f"{minute} {int(at) + 1} {rest}"  # the peak ends an hour late
    floors = list(load_schedule(WEEK).floors)
    assert [keda_replicas(scaled, hour) for hour in range(HOURS_PER_WEEK)] != floors


# --- systemd ----------------------------------------------------------------------------


def timer_calendar(path: Path) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = path.read_text()
    values = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("OnCalendar=")]
    parser.read_string(text)
    assert parser["Timer"]["Persistent"] == "true"
    return values


def test_systemd_analyze_reads_every_calendar_and_verifies_every_unit(tmp_path: Path) -> None:
    binary = shutil.which("systemd-analyze")
    assert binary is not None
    timers = sorted(SYSTEMD_DIR.glob("*.timer"))
    assert timers
    for timer in timers:
        for value in timer_calendar(timer):
            result = subprocess.run(
                [binary, "calendar", value], capture_output=True, text=True, timeout=30, check=False
            )  # fmt: skip
            assert result.returncode == 0, (value, result.stderr)
    for path in sorted(SYSTEMD_DIR.iterdir()):
        shutil.copy(path, tmp_path / path.name)
    result = systemd_verify(*sorted(tmp_path.iterdir()))
    assert result.returncode == 0 and result.stderr == "", result.stderr


def fire_hours(values: list[str]) -> set[int]:
    """Hours of the week of ``Mon,Tue 09:00:00 UTC`` lines (as rendered)."""
    hours = set()
    for value in values:
        days, at, _zone = value.split()
        hours |= {DAYS.index(day) * 24 + int(at[:2]) for day in days.split(",")}
    return hours


def test_the_timers_replay_the_floors() -> None:
    schedule: ReplicaSchedule = load_schedule(WEEK)
    for replica, unit in enumerate(UNITS.split(",")):
        stem = f"vkit-schedule-{unit.removesuffix('.service').replace('@', '-')}"
        starts = fire_hours(timer_calendar(SYSTEMD_DIR / f"{stem}-start.timer"))
        stops = fire_hours(timer_calendar(SYSTEMD_DIR / f"{stem}-stop.timer"))
        running = schedule.floors[-1] > replica  # Sunday 23:00, before the week starts again
        for hour in range(HOURS_PER_WEEK):
            running = True if hour in starts else False if hour in stops else running
            assert running == (schedule.floors[hour] > replica), (unit, hour)
