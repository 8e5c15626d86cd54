"""Spilled usage billed under the remote's name: the ledger's ``backend`` column (migration 3
on a ledger that has rows), the dollar split, ``vkit usage``; and the spill-over settings'
one-line refusals."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.keyfile import parse_keys
from gateway.ledger import LedgerStore, UsageRow, open_store, split_bill
from gateway.ledger.schema import MIGRATIONS
from gateway.ledger.tally import UsageTally
from gateway.spill import check_reachable, may_spill
from gateway.spill_settings import SpillError, SpillSettings
from vkit.cli import main

H = 1_764_547_200  # 2025-12-01T00:00:00Z


def test_a_keys_usage_on_two_backends_is_two_rows(ledger_store: LedgerStore) -> None:
    ledger_store.migrate()
    tally = UsageTally()
    tally.record("alice", "llama", "", 10, 20, H)
    tally.record("alice", "llama", "", 1, 2, H + 5, backend="runpod")
    tally.record("alice", "llama", "", 3, 4, H + 9, backend="runpod")
    ledger_store.add(tally.take(), {}, H)
    got = {(r.backend, r.requests, r.tokens) for r in ledger_store.usage(H, H + 3600)}
    assert got == {("local", 1, 30), ("runpod", 2, 10)}
    assert ledger_store.spent({"day": H})["alice"] == {"total": 40, "day": 40}  # budgets: both


def test_migration_3_keeps_the_rows_a_ledger_had_as_local(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    with sqlite3.connect(path) as db:  # a ledger written by a gateway at schema version 2
        db.execute("CREATE TABLE ledger_schema (version INTEGER PRIMARY KEY, summary TEXT)")
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                db.execute(statement)
            db.execute("INSERT INTO ledger_schema VALUES (?, ?)", (migration.version, "x"))
        db.execute("INSERT INTO usage_hours VALUES ('alice', ?, 'llama', '', 2, 5, 6)", (H,))
    db.close()
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.migrate() == 3
        assert store.usage(H, H + 3600) == [UsageRow(H, "alice", "llama", "", 2, 5, 6, "local")]
        store.add([UsageRow(H, "alice", "llama", "", 1, 1, 1, "runpod")], {}, H)
        assert len(store.usage(H, H + 3600)) == 2
    finally:
        store.close()


def test_spilled_rows_take_no_share_of_the_gpu_bill() -> None:
    rows = [
        UsageRow(H, "alice", "llama", "", 1, 500, 500),
        UsageRow(H, "bob", "llama", "", 1, 9000, 9000, "runpod"),
    ]
    split = split_bill(rows, {(H, "llama"): 4.0})
    assert split.per_key() == {"alice": 4.0}


def test_vkit_usage_shows_spilled_usage_on_a_line_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    store.migrate()
    store.add(
        [
            UsageRow(H, "alice", "llama", "", 4, 600, 200),
            UsageRow(H, "alice", "llama", "", 2, 60, 20, "runpod"),
        ],
        {"llama": 4.0},
        H,
    )
    store.close()
    argv = ["usage", "--keys-file", str(tmp_path / "keys.yaml"), "--period", "2025-12"]
    assert main([*argv, "--format", "json"]) == 0
    lines = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["backend"], r["requests"], r["dollars"]) for r in lines] == [
        ("local", 4, 4.0),
        ("runpod", 2, 0.0),
    ]


def test_only_an_opted_in_key_that_may_leave_the_premises_spills() -> None:
    text = "keys:\n" + "".join(
        f"  - {{name: {name}, sha256: '{digit * 64}'{extra}}}\n"
        for name, digit, extra in (
            ("plain", "a", ""),
            ("spills", "b", ", spill: true"),
            ("kept", "c", ", spill: true, on_premises: true"),
        )
    )
    keys = {key.name: key for key in parse_keys(text)}
    assert [name for name, key in keys.items() if may_spill(key)] == ["spills"]
    assert not may_spill(None)  # anonymous


def test_bad_spill_settings_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set api_key or api_key_file, not both"):
        SpillSettings(url="https://x.example", api_key="k", api_key_file=tmp_path / "k")
    with pytest.raises(ValidationError, match="'local' is the local replicas' label"):
        SpillSettings(url="https://x.example", name="local")
    with pytest.raises(SpillError, match=r"^spill: cannot read api_key_file .*/missing: "):
        SpillSettings(url="https://x.example", api_key_file=tmp_path / "missing").secret()
    (tmp_path / "key").write_text("  rk-secret  \nignored\n")
    assert SpillSettings(api_key_file=tmp_path / "key").secret() == "rk-secret"


def test_a_required_remote_that_does_not_answer_stops_the_start() -> None:
    settings = SpillSettings(url="http://127.0.0.1:9", name="runpod", required=True, connect=2)
    with pytest.raises(SpillError) as refused:
        check_reachable(settings)
    message = str(refused.value)
    assert message.startswith("spill-over endpoint runpod at http://127.0.0.1:9 does not answer: ")
    assert "\n" not in message
    check_reachable(settings.model_copy(update={"required": False}))  # not required: no probe


def test_vkit_keys_add_writes_the_spill_flags_only_when_given(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    assert main(["keys", "add", "plain", "--file", str(keys)]) == 0
    assert main(["keys", "add", "burst", "--spill", "--file", str(keys)]) == 0
    assert main(["keys", "add", "kept", "--spill", "--on-premises", "--file", str(keys)]) == 0
    text = keys.read_text()
    assert text.count("spill: true") == 2 and text.count("on_premises: true") == 1
    assert "false" not in text  # a plain key's file is as before
    assert [k.name for k in parse_keys(text) if may_spill(k)] == ["burst"]
