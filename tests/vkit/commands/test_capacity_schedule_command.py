"""``vkit capacity --schedule``: the B2B week printed with its saving, written as a file that
loads back, and bad schedules refused with one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.sizing.capacity.schedule import ScheduleError
from vkit.cli import main
from vkit.commands.capacity_schedule import load_schedule

B2B = ["--users", "100000", "--tp", "1", "--schedule", "--weekend-share", "0", "--allow-zero"]


def test_the_b2b_example_prints_its_week_and_saving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", *B2B]) == 0
    out = capsys.readouterr().out
    assert "  Mon-Fri          09:00-17:00  3" in out
    assert "  Sat-Sun          00:00-24:00  0" in out
    assert "Monthly: $334 scheduled vs $842 always on at peak: $508 saved" in out


def test_the_schedule_file_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "week.json"
    assert main(["capacity", *B2B, "--timezone", "Europe/Berlin", "--schedule-out", str(out)]) == 0
    schedule = load_schedule(out)
    assert schedule.timezone == "Europe/Berlin" and schedule.peak_replicas == 3
    edited = json.loads(out.read_text())
    edited["floors"][24 + 10] = 1  # Tuesday 10:00 by hand
    out.write_text(json.dumps(edited))
    with pytest.raises(ScheduleError, match="Tue 10:00: 1 replica"):
        load_schedule(out)


def test_json_says_the_saving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", *B2B, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert round(data["saved_usd"]) == 508 and len(data["floors"]) == 168


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-replicas", "2"], "--max-replicas 2: Mon 09:00: 2 replica(s) scheduled"),
        (["--timezone", "Mars/X"], "--timezone: 'Mars/X' is not an IANA time zone"),
        (["--peak-start", "24"], "--peak-start"),
        (["--peak-hours", "7.5"], "whole number of hours"),
        (["--model", "70b", "--gpus", "rtx4090"], "runs on none of the GPUs considered"),
    ],
)
def test_bad_schedules_are_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["capacity", *B2B, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_a_missing_schedule_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match=r"week\.json"):
        load_schedule(tmp_path / "week.json")
