"""The usage ledger: usage per key x model x hour in SQLite or PostgreSQL, key budgets over a
day, week, month and in total, and dollars from each replica group's price per hour
(docs/usage-ledger.md).

    ledger = Ledger(open_store("sqlite:///keys/usage.sqlite3"), flush_interval=1.0, ...)
    ledger.start()                               # migrate; LedgerError if unreachable
    ledger.record(key, model, prompt, completion)  # billing: a dict update
    ledger.refusal(key_name, key.budgets)        # admission: BudgetExceeded or None

Modules:

- :mod:`.tally` -- usage accumulated in memory per key, model, adapter and hour; the backlog;
- :mod:`.schema` -- the tables, as numbered migrations that roll forward;
- :mod:`.store` -- the database (SQLite or PostgreSQL), synchronous, one connection;
- :mod:`.owner` -- one gateway per SQLite file: a lock beside it, taken at start;
- :mod:`.writer` -- :class:`Ledger`: the tally flushed in batches on a thread of its own;
- :mod:`.budgets` -- budgets per key and window, and the book admission reads;
- :mod:`.dollars` -- a group's hourly price split by each key's share of its tokens;
- :mod:`.exported` -- :class:`LedgerCollector`: spending, budget use and the backlog on
  ``/metrics``, read at each scrape.
"""

from gateway.ledger.budgets import BudgetBook, KeyBudgets, Limit
from gateway.ledger.dollars import Split, split_bill
from gateway.ledger.exported import LedgerCollector
from gateway.ledger.store import LedgerError, LedgerStore, open_store
from gateway.ledger.tally import UsageRow, UsageTally
from gateway.ledger.writer import Ledger

__all__ = [
    "BudgetBook",
    "KeyBudgets",
    "Ledger",
    "LedgerCollector",
    "LedgerError",
    "LedgerStore",
    "Limit",
    "Split",
    "UsageRow",
    "UsageTally",
    "open_store",
    "split_bill",
]
