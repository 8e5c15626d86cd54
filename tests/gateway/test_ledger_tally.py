"""Usage counted in memory: one row per key, model, adapter and hour; the bounded backlog."""

from __future__ import annotations

from gateway.ledger.tally import Backlog, UsageRow, UsageTally, hour_of

H = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_requests_of_one_hour_make_one_row() -> None:
    tally = UsageTally()
    for i in range(1000):
        tally.record("alice", "m", "", prompt=3, completion=4, at=H + i)
    tally.record("alice", "m", "", prompt=1, completion=1, at=H + 3600)  # the next hour
    tally.record("bob", "m", "", prompt=1, completion=0, at=H + 5)
    rows = sorted(tally.take(), key=lambda r: (r.hour, r.key))
    assert rows == [
        UsageRow(H, "alice", "m", "", 1000, 3000, 4000),
        UsageRow(H, "bob", "m", "", 1, 1, 0),
        UsageRow(H + 3600, "alice", "m", "", 1, 1, 1),
    ]
    assert tally.take() == []  # taken: the tally starts again


def test_hour_of_is_the_hours_start() -> None:
    assert hour_of(H + 3599.9) == H
    assert hour_of(H + 3600) == H + 3600


def test_the_backlog_merges_and_drops_the_oldest_hours_past_its_bound() -> None:
    backlog = Backlog(max_rows=2)
    assert backlog.add([UsageRow(H, "a", "m", "", 1, 1, 1)]) == []
    assert backlog.add([UsageRow(H, "a", "m", "", 2, 2, 2)]) == []  # merged: still one row
    dropped = backlog.add(
        [UsageRow(H + 3600, "a", "m", "", 1, 0, 0), UsageRow(H + 7200, "a", "m", "", 1, 0, 0)]
    )
    assert dropped == [UsageRow(H, "a", "m", "", 3, 3, 3)]  # the oldest hour went
    assert backlog.dropped == 1
    assert sorted(r.hour for r in backlog.rows()) == [H + 3600, H + 7200]


def test_a_batch_that_may_be_written_is_kept_as_it_is_and_its_id_with_it() -> None:
    backlog = Backlog(max_rows=3)
    backlog.add([UsageRow(H, "a", "m", "", 1, 1, 1)])
    ((first, _),) = backlog.batches()
    backlog.tried()  # its COMMIT's answer was lost
    backlog.add([UsageRow(H, "a", "m", "", 2, 2, 2)])
    backlog.add([UsageRow(H, "a", "m", "", 4, 4, 4)])  # merged into the new batch
    (kept, rows_kept), (_, rows_new) = backlog.batches()
    assert kept == first and rows_kept == [UsageRow(H, "a", "m", "", 1, 1, 1)]
    assert rows_new == [UsageRow(H, "a", "m", "", 6, 6, 6)]
    assert len(backlog) == 2
    dropped = backlog.add(
        [UsageRow(H + 3600, "b", "m", "", 1, 0, 0), UsageRow(H + 7200, "b", "m", "", 1, 0, 0)]
    )  # four rows: the oldest hour of the oldest batch goes first
    assert dropped == [UsageRow(H, "a", "m", "", 1, 1, 1)]
    assert [batch_id for batch_id, _ in backlog.batches()] != [first]
    assert len(backlog.batches()) == 1 and len(backlog) == 3
