"""The running ledger: counted on the request path, written in batches on a thread of its own.

    ledger = Ledger(open_store(url), settings.ledger)
    ledger.start()                          # migrate (at start: an unreachable database stops it)
    ledger.record("alice", "llama", 12, 30) # billing: a dict update, nothing more
    ledger.refusal(key)                     # admission: the 429 of a spent budget, or None
    await ledger.run_forever()              # every flush_interval s: write, then read budgets
    await ledger.close()                    # a last flush (bounded), then close

Each flush takes the tally (:class:`gateway.ledger.tally.UsageTally`) into the backlog and
writes the backlog in one transaction on the ledger's own thread; the event loop only waits
for that thread's answer in this background task, never in a request. A failed write keeps
the backlog (bounded by ``max_backlog_rows``, oldest hours dropped first and counted) for the
next flush. The backlog is made of batches, each written with its id: a write whose COMMIT
may have reached the database (its answer lost) is retried batch for batch with the same ids,
and the database skips a batch it already holds, so nothing is counted twice. The most a
crash can lose is what was counted since the last successful write:
``flush_interval`` seconds of usage while the database answers, the backlog while it does not.
Every ``budget_refresh`` s the same thread reads each key's spending per window
(:mod:`gateway.ledger.budgets`) after writing, so the book counts this gateway's own usage once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from gateway.errors import BudgetExceeded
from gateway.ledger.budgets import BudgetBook, KeyBudgets, Spent, window_starts
from gateway.ledger.dollars import split_bill
from gateway.ledger.owner import SqliteClaim, claim_sqlite
from gateway.ledger.store import LedgerError, LedgerStore, sqlite_path
from gateway.ledger.tally import Backlog, UsageRow, UsageTally, hour_of
from gateway.spill_settings import LOCAL

log = logging.getLogger("vkit.gateway.ledger")

NO_ADAPTER = ""


class Ledger:
    """One gateway's ledger: its tally, its backlog, its budget book and its database."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        flush_interval: float,
        budget_refresh: float,
        max_backlog_rows: int,
        prices: Mapping[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.budget_refresh = budget_refresh
        self.prices = dict(prices)
        self.clock = clock
        self.tally = UsageTally()
        self.backlog = Backlog(max_backlog_rows)
        self.book = BudgetBook()
        self.writes = 0  # successful flushes
        self.failures = 0  # failed flushes (the backlog kept)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vkit-ledger")
        self._read_at = float("-inf")
        self._failing = False
        self._flushing: asyncio.Future[bool] | None = None
        self._claim: SqliteClaim | None = None

    # -- the request path -------------------------------------------------------------------

    def record(
        self, key: str, model: str, prompt: int, completion: int, backend: str = LOCAL
    ) -> None:
        """Count one request's tokens (billing calls it once the answer is over), under the
        backend that served it (``local``, or the spill-over endpoint's name)."""
        self.tally.record(key, model, NO_ADAPTER, prompt, completion, self.clock(), backend)
        unwritten = self.book.unwritten
        unwritten[key] = unwritten.get(key, 0) + prompt + completion

    def refusal(self, name: str, budgets: KeyBudgets | None) -> BudgetExceeded | None:
        """The 429 of a spent budget for key ``name``, else ``None`` (dict look-ups)."""
        if budgets is None:
            return None
        return self.book.refusal(name, budgets, self.clock())

    def remaining(self, name: str, budgets: KeyBudgets | None) -> dict[str, str]:
        """The ``x-budget-*`` headers of an admitted request (none without budgets)."""
        if budgets is None:
            return {}
        return self.book.remaining(name, budgets, self.clock())

    # -- the background part ----------------------------------------------------------------

    def start(self) -> int:
        """Migrate the database (synchronously, before serving): its schema version. An
        unreachable or newer database raises :class:`LedgerError`."""
        database = sqlite_path(self.store.url)
        if database is not None and self._claim is None:
            self._claim = claim_sqlite(database)  # one gateway per SQLite file
        version = self.store.migrate()
        self._refresh_now()
        return version

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> bool:
        """Write what was counted (and any backlog); read the budgets when due. ``False``
        when the database failed (the rows are kept for the next flush). One flush at a
        time, and a caller cancelled while it writes does not stop it: its thread may
        already have committed, and only the flush's own end clears what it wrote."""
        running = self._flushing
        if running is not None and not running.done():
            await asyncio.shield(running)
        running = self._flushing = asyncio.ensure_future(self._flush_once())
        return await asyncio.shield(running)

    async def _flush_once(self) -> bool:
        self._keep(self.tally.take())
        batches = self.backlog.batches()
        pending = [row for _, rows in batches for row in rows]
        now = self.clock()
        read = now - self._read_at >= self.budget_refresh
        loop = asyncio.get_running_loop()
        try:
            spent = await loop.run_in_executor(self._thread, self._write, batches, now, read)
        except LedgerError as exc:
            if exc.maybe_written:
                self.backlog.tried()  # retried as they are, with their ids
            self.failures += 1
            if not self._failing:
                log.warning("ledger write failed, %d rows kept: %s", len(pending), exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("ledger written again after %d failed flushes", self.failures)
        self._failing = False
        self.writes += 1
        self.backlog.clear()
        self._forget(pending)
        if spent is not None:
            self._read_at = now
            self.book.replace(spent, window_starts(_utc(now)), _utc(now))
        return True

    async def close(self, within: float = 3.0) -> None:
        """A last flush, waiting at most ``within`` s; then the thread and the connection."""
        try:
            await asyncio.wait_for(self.flush(), within)
        except TimeoutError:
            left = len(self.backlog)
            log.warning("ledger: the last flush took over %g s; %d rows not written", within, left)
        self._thread.shutdown(wait=False)
        self.store.close()
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _keep(self, rows: list[UsageRow]) -> None:
        self._forget(self.backlog.add(rows))  # rows dropped: never to be written

    def _forget(self, rows: list[UsageRow]) -> None:
        unwritten = self.book.unwritten
        for row in rows:
            left = unwritten.get(row.key, 0) - row.tokens
            if left > 0:
                unwritten[row.key] = left
            else:
                unwritten.pop(row.key, None)

    def _refresh_now(self) -> None:
        now = self.clock()
        spent = self._read(now)
        self._read_at = now
        self.book.replace(spent, window_starts(_utc(now)), _utc(now))

    # -- on the ledger's thread -------------------------------------------------------------

    def _write(
        self, batches: list[tuple[str, list[UsageRow]]], now: float, read: bool
    ) -> dict[str, Spent] | None:
        skipped = self.store.write(batches, self.prices, hour_of(now), now)
        if skipped:
            log.warning("ledger: %d batches were written before (their answer lost)", skipped)
        return self._read(now) if read else None

    def _read(self, now: float) -> dict[str, Spent]:
        return read_spending(self.store, now, dollars=bool(self.prices))


def read_spending(store: LedgerStore, now: float, *, dollars: bool) -> dict[str, Spent]:
    """Each key's tokens (and, with ``dollars``, dollars) per budget window at ``now``."""
    windows = window_starts(_utc(now))
    tokens = store.spent(windows)
    paid = _dollars(store, windows, now) if dollars else {}
    return {
        key: Spent(tokens=tokens.get(key, {}), dollars=paid.get(key, {}))
        for key in tokens.keys() | paid.keys()
    }


def _dollars(
    store: LedgerStore, windows: Mapping[str, int], now: float
) -> dict[str, dict[str, float]]:
    """Each key's dollars per window and in total (the bill split over all its hours)."""
    until = hour_of(now) + 3600
    split = split_bill(store.usage(0, until), store.group_hours(0, until))
    per_key: dict[str, dict[str, float]] = {}
    for (key, _, hour), value in split.by_row.items():
        spent = per_key.setdefault(key, {})
        spent["total"] = spent.get("total", 0.0) + value
        for name, start in windows.items():
            if hour >= start:
                spent[name] = spent.get(name, 0.0) + value
    return per_key


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)
