"""The ledger's tables, as a list of numbered migrations that only roll forward.

:data:`MIGRATIONS` is applied in order by :meth:`gateway.ledger.store.LedgerStore.migrate`,
each in its own transaction, recording its number in ``ledger_schema``; a gateway starting on
a database at a higher number than it knows refuses to write to it
(:class:`~gateway.ledger.store.LedgerError`). A change to the tables is a new entry at the
end, never an edit of one that shipped. The SQL is the subset SQLite and PostgreSQL share.

- ``usage_hours``: one row per key, model, adapter and hour (the hour's start, Unix seconds):
  requests, prompt and completion tokens; the primary key leads with the key (a key's usage
  over a period is one index range), and a second index on the hour (a period's usage).
- ``key_totals``: each key's usage since it first appeared, kept beside (the ``total``
  budget reads one row, not the key's whole history).
- ``group_hours``: the price per hour of the replica group serving each model, for every
  hour a gateway was running: the GPU bill the dollars split (docs/usage-ledger.md); an
  hour of a group with no tokens is idle.
- ``ledger_batches`` (2): the id of every batch of rows a gateway wrote, with the time it was
  written, in the same transaction as its rows: a batch whose commit's answer was lost is
  retried with its id, and skipped when the id is already there (the upserts add, so a batch
  written twice would count twice). Ids older than :data:`BATCH_IDS_KEPT_S` are deleted by
  the writes that follow.
- ``usage_hours.backend`` (3): who served the row's requests -- ``local`` (the replicas), or
  the spill-over endpoint's name (:mod:`gateway.spill`) -- part of the primary key, so a key's
  spilled usage is a row of its own. SQLite cannot change a primary key in place: the table
  is rebuilt (copied, dropped, renamed), its existing rows ``local``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage per key, model, adapter and hour; totals per key; group prices per hour",
        (
            """CREATE TABLE usage_hours (
                key TEXT NOT NULL,
                hour BIGINT NOT NULL,
                model TEXT NOT NULL,
                adapter TEXT NOT NULL DEFAULT '',
                requests BIGINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                PRIMARY KEY (key, hour, model, adapter)
            )""",
            "CREATE INDEX usage_hours_by_hour ON usage_hours (hour)",
            """CREATE TABLE key_totals (
                key TEXT PRIMARY KEY,
                requests BIGINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL
            )""",
            """CREATE TABLE group_hours (
                hour BIGINT NOT NULL,
                model TEXT NOT NULL,
                price_per_hour DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (hour, model)
            )""",
        ),
    ),
    Migration(
        2,
        "ids of the batches written: a batch retried after a lost answer is written once",
        (
            "CREATE TABLE ledger_batches (id TEXT PRIMARY KEY, written_at BIGINT NOT NULL)",
            "CREATE INDEX ledger_batches_by_time ON ledger_batches (written_at)",
        ),
    ),
    Migration(
        3,
        "the backend of each usage row: local replicas, or the spill-over endpoint",
        (
            """CREATE TABLE usage_hours_3 (
                key TEXT NOT NULL,
                hour BIGINT NOT NULL,
                model TEXT NOT NULL,
                adapter TEXT NOT NULL DEFAULT '',
                backend TEXT NOT NULL DEFAULT 'local',
                requests BIGINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                PRIMARY KEY (key, hour, model, adapter, backend)
            )""",
            """INSERT INTO usage_hours_3
                (key, hour, model, adapter, backend, requests, prompt_tokens, completion_tokens)
                SELECT key, hour, model, adapter, 'local', requests, prompt_tokens,
                    completion_tokens
                FROM usage_hours""",
            "DROP TABLE usage_hours",
            "ALTER TABLE usage_hours_3 RENAME TO usage_hours",
            "CREATE INDEX usage_hours_by_hour ON usage_hours (hour)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS ledger_schema (version INTEGER PRIMARY KEY, summary TEXT NOT NULL)"
)

UPSERT_USAGE = """INSERT INTO usage_hours
    (key, hour, model, adapter, backend, requests, prompt_tokens, completion_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key, hour, model, adapter, backend) DO UPDATE SET
        requests = usage_hours.requests + excluded.requests,
        prompt_tokens = usage_hours.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_hours.completion_tokens + excluded.completion_tokens"""

UPSERT_TOTAL = """INSERT INTO key_totals (key, requests, prompt_tokens, completion_tokens)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        requests = key_totals.requests + excluded.requests,
        prompt_tokens = key_totals.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = key_totals.completion_tokens + excluded.completion_tokens"""

# The first gateway to note an hour sets its price; the price of an hour does not change.
NOTE_GROUP_HOUR = """INSERT INTO group_hours (hour, model, price_per_hour) VALUES (?, ?, ?)
    ON CONFLICT (hour, model) DO NOTHING"""

# A batch's id, noted in its own transaction: no row inserted means it was written before.
NOTE_BATCH = """INSERT INTO ledger_batches (id, written_at) VALUES (?, ?)
    ON CONFLICT (id) DO NOTHING"""

# How long a batch's id is kept: a batch retried later than this after its first try (a
# database away for over a day right after a lost answer) could be counted twice.
BATCH_IDS_KEPT_S = 86_400

PRUNE_BATCHES = "DELETE FROM ledger_batches WHERE written_at < ?"
