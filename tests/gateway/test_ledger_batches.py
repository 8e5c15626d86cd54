"""A flush whose commit reached the database but whose answer was lost: written once, never
twice (each batch's id is written with it; a retry of a batch already there is skipped)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.ledger import Ledger, LedgerStore
from gateway.ledger.store import sqlite_path


class CommitThenFail(sqlite3.Connection):
    """A real SQLite connection whose next ``lose`` COMMITs take effect and then fail, as a
    COMMIT that reached the database but whose answer never came back (the server stopped,
    the connection broke right after) fails in the driver."""

    store: LostReplies

    def commit(self) -> None:
        super().commit()
        if self.store.lose > 0:
            self.store.lose -= 1
            raise sqlite3.OperationalError("server closed the connection unexpectedly")


class LostReplies(LedgerStore):
    """The ledger's SQLite store, on connections that lose the answers of COMMITs."""

    def __init__(self, url: str, lose: int) -> None:
        super().__init__(url, "sqlite")
        self.lose = lose

    def _connect(self) -> sqlite3.Connection:
        path = sqlite_path(self.url)
        assert path is not None
        conn = sqlite3.connect(path, factory=CommitThenFail, check_same_thread=False)
        conn.store = self
        return conn


def lossy_ledger(tmp_path: Path, lose: int) -> Ledger:
    store = LostReplies(f"sqlite:///{tmp_path / 'usage.sqlite3'}", lose)
    ledger = Ledger(
        store, flush_interval=1, budget_refresh=0, max_backlog_rows=100, prices={"m": 2.0}
    )
    ledger.start()
    return ledger


async def test_a_commit_whose_answer_was_lost_is_not_counted_twice(tmp_path: Path) -> None:
    ledger = lossy_ledger(tmp_path, lose=0)
    ledger.store.lose = 2  # type: ignore[attr-defined]  # from now on (start has written)
    ledger.record("a", "m", 3, 4)
    assert await ledger.flush() is False  # committed, but the gateway cannot know it
    ledger.record("a", "m", 1, 1)
    ledger.record("b", "m", 5, 0)
    assert await ledger.flush() is False  # again: the retry and the new rows both committed
    ledger.record("a", "m", 10, 10)
    assert await ledger.flush() is True
    rows = {row.key: row for row in ledger.store.usage(0, 2**40)}
    assert {k: (r.requests, r.prompt_tokens, r.completion_tokens) for k, r in rows.items()} == {
        "a": (3, 14, 15),
        "b": (1, 5, 0),
    }
    assert ledger.book.spent["a"].tokens["total"] == 29  # key_totals: once each, too
    assert ledger.book.unwritten == {}
    assert len(ledger.backlog) == 0
    await ledger.close()


async def test_a_batch_that_may_be_written_is_kept_apart_and_new_rows_merge(
    tmp_path: Path,
) -> None:
    ledger = lossy_ledger(tmp_path, lose=0)
    ledger.store.lose = 1  # type: ignore[attr-defined]
    ledger.record("a", "m", 1, 1)
    assert await ledger.flush() is False
    here = tmp_path / "usage.sqlite3"
    ledger.store.url = f"sqlite:///{tmp_path / 'away' / 'usage.sqlite3'}"  # cannot open: unsent
    ledger.record("a", "m", 2, 2)
    assert await ledger.flush() is False
    ledger.record("a", "m", 4, 4)
    assert await ledger.flush() is False
    first, second = ledger.backlog.batches()  # the one in doubt as it was; the rest merged
    assert [(r.requests, r.prompt_tokens) for r in first[1]] == [(1, 1)]
    assert [(r.requests, r.prompt_tokens) for r in second[1]] == [(2, 6)]
    ledger.store.url = f"sqlite:///{here}"
    assert await ledger.flush() is True
    (row,) = ledger.store.usage(0, 2**40)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 7, 7)
    await ledger.close()
