"""``vkit usage`` and ``vkit keys budget`` on a real SQLite ledger."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.keyfile import add_key, load_keys
from gateway.ledger import UsageRow, open_store
from gateway.ledger.tally import hour_of
from vkit.cli import main
from vkit.commands.ledger_usage import parse_period
from vkit.exit_codes import UsageError

H = 1_764_547_200  # 2025-12-01T00:00:00Z


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    """A keys file with alice and bob, and a ledger beside it: one hour of llama at $4/h
    (alice 8,000 tokens, bob 2,000) and the next hour idle."""
    keys = tmp_path / "keys.yaml"
    add_key(keys, "alice")
    add_key(keys, "bob")
    store = open_store(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    store.migrate()
    store.add(
        [
            UsageRow(H, "alice", "llama", "", 10, 6000, 2000),
            UsageRow(H, "bob", "llama", "", 3, 1000, 1000),
        ],
        {"llama": 4.0},
        H,
    )
    store.add([], {"llama": 4.0}, H + 3600)
    store.close()
    return keys


def test_the_period_names() -> None:
    now = datetime(2026, 3, 4, 12, tzinfo=UTC)  # a Wednesday
    assert parse_period("last-month", now).start == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_period("this-week", now).start == datetime(2026, 3, 2, tzinfo=UTC)
    span = parse_period("2026-01-30..2026-02-02", now)
    assert (span.start, span.end) == (
        datetime(2026, 1, 30, tzinfo=UTC),
        datetime(2026, 2, 3, tzinfo=UTC),
    )
    with pytest.raises(UsageError, match="unknown period 'fortnight'"):
        parse_period("fortnight", now)
    with pytest.raises(UsageError, match="'2026-13-01' is not a date"):
        parse_period("2026-13-01", now)


def test_usage_by_key_adds_up_to_the_bill_with_idle_its_own_line(
    keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["usage", "--keys-file", str(keys_file), "--period", "2025-12", "--by", "key"]
    assert main([*args, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    dollars = {row["key"]: row["dollars"] for row in report["rows"]}
    assert dollars == {"alice": 3.2, "bob": 0.8, "(idle)": 4.0}
    assert report["dollars"] == 8.0 and report["idle_dollars"] == 4.0
    assert main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == {
        "key": "alice",
        "requests": "10",
        "prompt_tokens": "6000",
        "completion_tokens": "2000",
        "dollars": "3.2",
    }
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "2025-12: $8.00 billed, $4.00 idle (50.0% of the GPU bill)" in table


def test_one_key_is_priced_by_its_share_of_every_keys_tokens(
    keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["usage", "--keys-file", str(keys_file), "--period", "2025-12-01", "--key", "bob"]
    assert main([*argv, "--by", "day", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row == {
        "day": "2025-12-01",
        "requests": 3,
        "prompt_tokens": 1000,
        "completion_tokens": 1000,
        "dollars": 0.8,
    }


def test_bad_input_is_one_line_each(
    keys_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["usage", "--keys-file", str(keys_file)]
    assert main([*base, "--key", "carol"]) == 1
    assert (
        capsys.readouterr().err
        == "vkit usage: error: no usage recorded for key 'carol' in the ledger\n"
    )
    assert main([*base, "--period", "someday"]) == 2
    assert "unknown period 'someday'" in capsys.readouterr().err
    assert main(["usage", "--keys-file", str(tmp_path / "elsewhere" / "keys.yaml")]) == 1
    assert "no ledger at" in capsys.readouterr().err
    assert main(["usage", "--ledger", f"sqlite:///{tmp_path}/no/such/dir/u.db"]) == 1
    err = capsys.readouterr().err
    assert "cannot open the ledger" in err and err.count("\n") == 1


def test_a_budget_is_set_and_one_below_the_spent_is_refused(
    keys_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    store.add([UsageRow(hour_of(time.time()), "alice", "llama", "", 1, 500, 500)], {}, H)
    store.close()
    budget = ["keys", "budget", "alice", "--file", str(keys_file)]
    assert main([*budget, "--period", "day", "--tokens", "999"]) == 1
    err = capsys.readouterr().err
    assert "key 'alice' has already used 1,000 tokens this day, above the budget of 999" in err
    assert main([*budget, "--period", "day", "--tokens", "5000"]) == 0
    assert main([*budget, "--period", "total", "--dollars", "100"]) == 0
    (alice,) = [k for k in load_keys(keys_file) if k.name == "alice"]
    assert alice.budgets is not None
    assert alice.budgets.day is not None and alice.budgets.day.tokens == 5000
    assert alice.budgets.total is not None and alice.budgets.total.dollars == 100
    capsys.readouterr()
    assert main(["keys", "list", "--file", str(keys_file)]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "alice" in line]
    assert line.endswith("day:5000tok total:$100")
    assert main([*budget, "--period", "day", "--clear"]) == 0
    assert main([*budget, "--period", "total", "--clear"]) == 0
    (alice,) = [k for k in load_keys(keys_file) if k.name == "alice"]
    assert alice.budgets is None
    assert (
        main(
            [
                "keys",
                "budget",
                "carol",
                "--file",
                str(keys_file),
                "--period",
                "day",
                "--tokens",
                "1",
            ]
        )
        == 1
    )
    assert main([*budget, "--period", "day"]) == 2  # neither a limit nor --clear
