"""Budgets per key: the UTC calendar, the book admission reads, and the gateway's 429; the
ledger's flushes (a database away, a flush cancelled mid-write)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gateway.ledger import KeyBudgets, Limit, open_store
from gateway.ledger.budgets import BudgetBook, Spent, resets_at, window_starts
from tests.gateway.conftest import SECRET, GatewayFactory, wait_until
from tests.gateway.doubles import Key
from tests.gateway.ledger_stores import a_ledger
from tests.vllm_standin import ScriptedUpstream

WED = datetime(2026, 12, 30, 15, 20, tzinfo=UTC)  # a Wednesday


def ts(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())  # type: ignore[misc]


def test_windows_are_the_utc_day_iso_week_and_calendar_month() -> None:
    assert window_starts(WED) == {
        "day": ts(2026, 12, 30),
        "week": ts(2026, 12, 28),  # Monday
        "month": ts(2026, 12, 1),
    }
    assert resets_at("day", WED) == datetime(2026, 12, 31, tzinfo=UTC)
    assert resets_at("week", WED) == datetime(2027, 1, 4, tzinfo=UTC)
    assert resets_at("month", WED) == datetime(2027, 1, 1, tzinfo=UTC)  # across the year
    assert resets_at("total", WED) is None


def test_the_book_refuses_at_the_budget_counting_what_is_not_yet_written() -> None:
    book = BudgetBook()
    budgets = KeyBudgets(day=Limit(tokens=100), month=Limit(dollars=5.0))
    book.replace({"a": Spent(tokens={"day": 60}, dollars={"month": 4.99})}, {}, WED)
    assert book.refusal("a", budgets, WED.timestamp()) is None
    book.unwritten["a"] = 40  # counted here since: 60 + 40 = the budget
    refused = book.refusal("a", budgets, WED.timestamp())
    assert refused is not None
    assert refused.code == "budget_exceeded" and refused.status_code == 429
    assert refused.headers["x-budget-remaining-tokens"] == "0"
    assert refused.headers["x-budget-limit-tokens"] == "100"
    assert refused.headers["x-budget-reset"] == "2026-12-31T00:00:00Z"
    assert refused.headers["retry-after"] == str((8 * 60 + 40) * 60)
    assert "this day" in refused.message
    book.unwritten["a"] = 0
    book.replace({"a": Spent(tokens={"day": 0}, dollars={"month": 5.0})}, {}, WED)
    dollars = book.refusal("a", budgets, WED.timestamp())
    assert dollars is not None and "$5.00 this month" in dollars.message
    assert book.refusal("b", budgets, WED.timestamp()) is None  # a key the ledger has not seen


def test_a_budget_of_millions_of_tokens_is_written_out_whole_in_the_headers() -> None:
    """A monthly budget of 40M tokens: ``x-budget-limit-tokens: 40000000``, not ``4e+07``."""
    book = BudgetBook()
    budgets = KeyBudgets(month=Limit(tokens=40_000_000, dollars=1234.5))
    book.replace({"a": Spent(tokens={"month": 40_000_000})}, {}, WED)
    refused = book.refusal("a", budgets, WED.timestamp())
    assert refused is not None and refused.headers["x-budget-limit-tokens"] == "40000000"
    book.replace({"a": Spent(tokens={"month": 1}, dollars={"month": 1234.5})}, {}, WED)
    refused = book.refusal("a", budgets, WED.timestamp())
    assert refused is not None and refused.headers["x-budget-limit-dollars"] == "1234.50"


def test_an_answer_within_the_budgets_says_what_is_left_of_the_tightest() -> None:
    """Success headers: the budget with the smallest share left (here the day's 30 of 100
    tokens, against 3.0 of the month's 5.0 dollars), as the 429 names the one spent."""
    book = BudgetBook()
    budgets = KeyBudgets(day=Limit(tokens=100), month=Limit(dollars=5.0))
    book.replace({"a": Spent(tokens={"day": 60}, dollars={"month": 2.0})}, {}, WED)
    book.unwritten["a"] = 10
    assert book.remaining("a", budgets, WED.timestamp()) == {
        "x-budget-period": "day",
        "x-budget-limit-tokens": "100",
        "x-budget-remaining-tokens": "30",
        "x-budget-reset": "2026-12-31T00:00:00Z",
    }
    book.unwritten["a"] = 0  # the day: 70 of 100 left; the month: 1.00 of 5.00 (20%)
    book.replace({"a": Spent(tokens={"day": 30}, dollars={"month": 4.0})}, {}, WED)
    assert book.remaining("a", budgets, WED.timestamp()) == {
        "x-budget-period": "month",
        "x-budget-limit-dollars": "5.00",
        "x-budget-remaining-dollars": "1.00",
        "x-budget-reset": "2027-01-01T00:00:00Z",
    }
    assert book.remaining("a", None, WED.timestamp()) == {}
    total = KeyBudgets(total=Limit(tokens=10))
    assert book.remaining("b", total, WED.timestamp()) == {
        "x-budget-period": "total",
        "x-budget-limit-tokens": "10",
        "x-budget-remaining-tokens": "10",
    }


async def test_a_key_over_its_budget_gets_429_budget_exceeded(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    ledger = a_ledger(url, flush=0.05, refresh=0.05)
    key = Key("alice", budgets=KeyBudgets(day=Limit(tokens=1)))
    gw = await start_gateway(keys={SECRET: key}, ledger=ledger)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {SECRET}"}
    first = await gw.client.post("/v1/chat/completions", json=body, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-budget-period"] == "day"  # what was left when it was admitted
    assert first.headers["x-budget-remaining-tokens"] == "1"
    refused = await gw.client.post("/v1/chat/completions", json=body, headers=auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-budget-period"] == "day"
    assert len(upstream.bodies) == 1  # refused before the upstream was asked
    assert gw.metric("vkit_gateway_rate_limited_total", {"key": "alice", "reason": "budget"}) == 1
    # written by the flush loop and read back: refused from what the database holds (one
    # gateway per SQLite file; two gateways share PostgreSQL in test_ledger_postgres.py)
    await wait_until(lambda: ledger.writes > 0 and not ledger.book.unwritten)
    assert ledger.refusal("alice", key.budgets) is not None


async def test_a_stream_within_the_budget_says_what_is_left_in_its_headers(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    ledger = a_ledger(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    key = Key("alice", budgets=KeyBudgets(month=Limit(tokens=1000)))
    gw = await start_gateway(keys={SECRET: key}, ledger=ledger)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    auth = {"Authorization": f"Bearer {SECRET}"}
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as got:
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("text/event-stream")
        assert got.headers["x-budget-period"] == "month"
        assert got.headers["x-budget-remaining-tokens"] == "1000"
        assert [line async for line in got.aiter_lines() if line][-1] == "data: [DONE]"
    unlimited = await start_gateway(keys={SECRET: Key("alice")}, ledger=ledger)
    plain = await unlimited.client.post("/v1/chat/completions", json=body, headers=auth)
    assert plain.status_code == 200 and "x-budget-period" not in plain.headers


async def test_a_database_away_keeps_the_rows_and_writes_them_when_back(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    ledger = a_ledger(f"sqlite:///{folder / 'usage.sqlite3'}", refresh=0, started=False)
    ledger.record("a", "m", 3, 4)
    assert await ledger.flush() is False  # no folder yet: the database is away
    ledger.record("a", "m", 1, 1)
    assert ledger.book.unwritten == {"a": 9}  # budgets still see it
    folder.mkdir()
    ledger.store.migrate()
    assert await ledger.flush() is True
    (row,) = ledger.store.usage(0, 2**40)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 4, 5)
    assert ledger.book.unwritten == {}
    assert ledger.book.spent["a"].tokens["total"] == 9
    await ledger.close()


async def test_a_flush_cancelled_mid_write_is_not_written_twice(tmp_path: Path) -> None:
    """Shutdown cancels the flush loop, perhaps while its thread is writing; the last flush
    must not write those rows again."""
    path = tmp_path / "usage.sqlite3"
    ledger = a_ledger(f"sqlite:///{path}", flush=0.01, refresh=60)
    ledger.record("a", "m", 1, 1)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # another writer: the ledger's write waits for it
    loop = asyncio.create_task(ledger.run_forever())
    await asyncio.sleep(0.3)
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    blocker.rollback()
    blocker.close()
    await ledger.close(within=10)
    reader = open_store(f"sqlite:///{path}")
    (row,) = reader.usage(0, 2**40)
    reader.close()
    assert row.requests == 1
