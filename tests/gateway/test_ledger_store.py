"""The ledger's database, on real SQLite and a real PostgreSQL server: migrations, upserts,
the windows budgets read, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ledger import LedgerError, LedgerStore, UsageRow, open_store
from gateway.ledger.schema import BATCH_IDS_KEPT_S, LATEST

H = 1_767_225_600  # 2026-01-01T00:00:00Z


def row(key: str, hour: int, prompt: int, completion: int, model: str = "m") -> UsageRow:
    return UsageRow(hour, key, model, "", 1, prompt, completion)


def test_migrate_rolls_forward_once(ledger_store: LedgerStore) -> None:
    assert ledger_store.migrate() == LATEST
    assert ledger_store.migrate() == LATEST  # again: nothing to apply, nothing broken
    ledger_store.add([row("a", H, 1, 2)], {}, H)
    assert ledger_store.usage(H, H + 3600) == [row("a", H, 1, 2)]


def test_a_newer_schema_is_refused(ledger_store: LedgerStore) -> None:
    ledger_store.migrate()
    newer = LATEST + 1
    ledger_store._transaction(
        lambda cur: cur.execute(
            ledger_store._sql("INSERT INTO ledger_schema (version, summary) VALUES (?, ?)"),
            (newer, "from the future"),
        )
    )
    with pytest.raises(LedgerError, match=f"schema version {newer}, newer than"):
        ledger_store.migrate()


def test_rows_of_one_hour_add_up(ledger_store: LedgerStore) -> None:
    ledger_store.migrate()
    ledger_store.add([row("a", H, 10, 20), row("b", H, 1, 1)], {"m": 2.0}, H)
    ledger_store.add([row("a", H, 5, 5), row("a", H + 3600, 7, 0)], {"m": 2.0}, H + 3600)
    got = {
        (r.key, r.hour): (r.requests, r.prompt_tokens, r.completion_tokens)
        for r in ledger_store.usage(H, H + 7200)
    }
    assert got == {("a", H): (2, 15, 25), ("b", H): (1, 1, 1), ("a", H + 3600): (1, 7, 0)}
    assert ledger_store.usage(H, H + 7200, key="b") == [row("b", H, 1, 1)]
    assert ledger_store.group_hours(H, H + 7200) == {(H, "m"): 2.0, (H + 3600, "m"): 2.0}
    assert ledger_store.key_names() == {"a", "b"}


def test_spent_counts_each_window_and_the_total(ledger_store: LedgerStore) -> None:
    ledger_store.migrate()
    rows = [row("a", H - 7200, 100, 0), row("a", H, 10, 0), row("a", H + 3600, 1, 0)]
    ledger_store.add(rows, {}, H)
    spent = ledger_store.spent({"month": H - 3600, "day": H + 3600})
    assert spent == {"a": {"total": 111, "month": 11, "day": 1}}


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    missing = open_store(f"sqlite:///{tmp_path / 'nowhere' / 'usage.sqlite3'}")
    with pytest.raises(LedgerError, match=r"cannot open the ledger at sqlite:///.*no such dir"):
        missing.migrate()
    with pytest.raises(LedgerError, match="use sqlite:///PATH or postgresql://"):
        open_store("mysql://u:secret@h/db")


@pytest.mark.integration
def test_an_unreachable_postgres_names_it_without_its_password() -> None:
    pytest.importorskip("psycopg")
    from vkit.stack.ports import free_port

    away = open_store(f"postgresql://vkit:hunter2@127.0.0.1:{free_port()}/ledger")
    with pytest.raises(LedgerError) as caught:
        away.migrate()
    message = str(caught.value)
    assert "hunter2" not in message and "vkit:***@127.0.0.1" in message
    assert "\n" not in message


def test_a_batch_already_written_is_skipped_and_old_ids_are_pruned(
    ledger_store: LedgerStore,
) -> None:
    ledger_store.migrate()
    now = H + 600
    assert ledger_store.write([("b1", [row("a", H, 1, 1)])], {}, H, now) == 0
    again = [("b1", [row("a", H, 1, 1)]), ("b2", [row("a", H, 2, 0)])]
    assert ledger_store.write(again, {}, H, now + 1) == 1  # b1 is in: only b2 is added
    (got,) = ledger_store.usage(H, H + 3600)
    assert (got.requests, got.prompt_tokens, got.completion_tokens) == (2, 3, 1)
    assert ledger_store.spent({})["a"]["total"] == 4

    def ids(cur: object) -> set[str]:
        cur.execute("SELECT id FROM ledger_batches")  # type: ignore[attr-defined]
        return {i for (i,) in cur.fetchall()}  # type: ignore[attr-defined]

    a_day_later = now + 1 + BATCH_IDS_KEPT_S + 1
    ledger_store.write([("b3", [row("a", H, 1, 0)])], {}, H, a_day_later)
    assert ledger_store._transaction(ids) == {"b3"}  # b1 and b2 older than a day: gone


def test_a_failed_commit_may_have_written_a_failure_before_it_did_not(tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as away:
        open_store(f"sqlite:///{tmp_path / 'no' / 'usage.sqlite3'}").add([], {}, H)
    assert away.value.maybe_written is False
    store = open_store(f"sqlite:///{tmp_path / 'usage.sqlite3'}")  # not migrated: no table
    with pytest.raises(LedgerError) as no_table:
        store.add([row("a", H, 1, 1)], {}, H)
    assert no_table.value.maybe_written is False
    store.close()
