"""The ledger's database: SQLite (one file, WAL) or PostgreSQL (several gateways), one class.

    store = open_store("sqlite:///var/lib/vkit/usage.sqlite3")   # or "postgresql://..."
    store.migrate()                          # roll the tables forward (gateway.ledger.schema)
    store.add(rows, prices={"llama": 2.5}, hour=hour_of(time.time()))   # one transaction
    store.write([(batch_id, rows), ...], prices, hour, now)  # each batch once, however retried
    store.usage(since, until)                # UsageRow per key, model, adapter, hour
    store.spent(windows)                     # tokens per key since each window's start

Synchronous (the sqlite3 module, psycopg 3): the gateway calls it on one thread of its own
(:mod:`gateway.ledger.writer`), never on the event loop. A connection that fails is closed
and opened again on the next call. Every failure is a :class:`LedgerError` with a one-line
message; ``maybe_written`` says whether the transaction may have been committed all the same
(its COMMIT was sent and its answer lost), so that only a batch with an id is retried then.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.ledger import schema
from gateway.ledger.tally import UsageRow

Dialect = Literal["sqlite", "postgres"]
CONNECT_TIMEOUT_S = 5
# pg_advisory_xact_lock's key for the ledger's migrations (any constant of its own).
MIGRATION_LOCK = 0x766B69746C6467  # "vkitldg"


class LedgerError(RuntimeError):
    """The ledger's database cannot be reached, read or written; one line says why.

    ``maybe_written`` is ``False`` only when the transaction certainly was not committed (the
    failure came before its COMMIT was sent); a failure of the COMMIT itself, or raised by
    anything else, may have left it written."""

    def __init__(self, message: str, *, maybe_written: bool = True) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


class _Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (``sqlite:////abs`` or ``sqlite:///rel``)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


def open_store(url: str) -> LedgerStore:
    """A store for ``url`` (``sqlite:///PATH`` or ``postgresql://...``); nothing is opened
    until the first call. An unknown scheme raises :class:`LedgerError`."""
    if sqlite_path(url) is not None:
        return LedgerStore(url, "sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        return LedgerStore(url, "postgres")
    raise LedgerError(f"ledger url '{_redacted(url)}': use sqlite:///PATH or postgresql://...")


class LedgerStore:
    """One connection to the ledger's database, opened on first use and again after a failure."""

    def __init__(self, url: str, dialect: Dialect) -> None:
        self.url = url
        self.dialect = dialect
        self._conn: _Connection | None = None

    @property
    def where(self) -> str:
        """The database, as a message may name it (no password)."""
        return _redacted(self.url)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a broken connection: nothing more to do
                conn.close()

    def migrate(self) -> int:
        """Apply the migrations this database lacks, in one transaction; the version it is
        at afterwards. On PostgreSQL the transaction first takes an advisory lock, so that
        gateways starting together on a new database migrate it one after the other (the
        later ones find it done) instead of creating the same tables at once."""

        def run(cur: Any) -> int:
            if self.dialect == "postgres":
                cur.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            cur.execute(schema.CREATE_VERSION_TABLE)
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM ledger_schema")
            current = int(cur.fetchone()[0])
            for migration in schema.MIGRATIONS:
                if current < migration.version <= schema.LATEST:
                    self._apply(cur, migration)
            return current

        current = self._transaction(run)
        if current > schema.LATEST:
            raise LedgerError(
                f"the ledger at {self.where} is at schema version {current}, newer than this "
                f"gateway's {schema.LATEST}: upgrade the gateway"
            )
        return max(current, schema.LATEST)

    def _apply(self, cur: Any, migration: schema.Migration) -> None:
        for statement in migration.statements:
            cur.execute(statement)
        cur.execute(
            self._sql("INSERT INTO ledger_schema (version, summary) VALUES (?, ?)"),
            (migration.version, migration.summary),
        )

    def add(self, rows: Sequence[UsageRow], prices: Mapping[str, float], hour: int) -> None:
        """Add ``rows`` to the hours they belong to, and note each priced group's price for
        ``hour`` (the gateway is running in it): one transaction, all or nothing. Rows
        without a batch id: a retry of a failed ``add`` may count them twice (tools, tests)."""
        self.write([(None, rows)], prices, hour, now=hour)

    def write(
        self,
        batches: Sequence[tuple[str | None, Sequence[UsageRow]]],
        prices: Mapping[str, float],
        hour: int,
        now: float,
    ) -> int:
        """Add each batch's rows unless its id is already in ``ledger_batches`` (written by an
        earlier try whose answer was lost), note the id, note the prices as :meth:`add` does,
        and delete ids older than ``schema.BATCH_IDS_KEPT_S``: one transaction. Returns how
        many batches were skipped as already written."""
        noted = int(now)

        def run(cur: Any) -> int:
            skipped = 0
            if any(batch_id is not None for batch_id, _ in batches):
                cur.execute(self._sql(schema.PRUNE_BATCHES), (noted - schema.BATCH_IDS_KEPT_S,))
            for batch_id, rows in batches:
                if batch_id is not None:
                    cur.execute(self._sql(schema.NOTE_BATCH), (batch_id, noted))
                    if cur.rowcount == 0:  # written before: its rows are in already
                        skipped += 1
                        continue
                self._add_rows(cur, rows)
            priced = [(hour, model, price) for model, price in prices.items()]
            if priced:
                cur.executemany(self._sql(schema.NOTE_GROUP_HOUR), priced)
            return skipped

        return int(self._transaction(run))

    def _add_rows(self, cur: Any, rows: Sequence[UsageRow]) -> None:
        if not rows:
            return
        totals: dict[str, list[int]] = {}
        for row in rows:
            total = totals.setdefault(row.key, [0, 0, 0])
            total[0] += row.requests
            total[1] += row.prompt_tokens
            total[2] += row.completion_tokens
        cur.executemany(self._sql(schema.UPSERT_USAGE), [_values(row) for row in rows])
        cur.executemany(self._sql(schema.UPSERT_TOTAL), [(k, *t) for k, t in totals.items()])

    def usage(self, since: int, until: int, key: str | None = None) -> list[UsageRow]:
        """Rows of the hours in ``[since, until)``, of one key or all."""
        sql = (
            "SELECT hour, key, model, adapter, requests, prompt_tokens, completion_tokens, "
            "backend FROM usage_hours WHERE hour >= ? AND hour < ?"
        )
        params: tuple[object, ...] = (since, until)
        if key is not None:
            sql += " AND key = ?"
            params += (key,)
        found = self._transaction(lambda cur: _fetch(cur, self._sql(sql), params))
        return [
            UsageRow(int(h), k, m, a, int(r), int(p), int(c), b) for h, k, m, a, r, p, c, b in found
        ]

    def group_hours(self, since: int, until: int) -> dict[tuple[int, str], float]:
        """``{(hour, model): price per hour}`` for the hours in ``[since, until)``."""
        sql = "SELECT hour, model, price_per_hour FROM group_hours WHERE hour >= ? AND hour < ?"
        found = self._transaction(lambda cur: _fetch(cur, self._sql(sql), (since, until)))
        return {(int(h), m): float(p) for h, m, p in found}

    def key_names(self) -> set[str]:
        """Every key the ledger has seen."""
        found = self._transaction(lambda cur: _fetch(cur, "SELECT key FROM key_totals", ()))
        return {k for (k,) in found}

    def spent(self, windows: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """Tokens per key since each window's start (``{"day": hour, ...}``), and ``total``
        (since the key first appeared): ``{key: {"day": n, ..., "total": n}}``."""
        names = list(windows)
        columns = ", ".join(
            "SUM(CASE WHEN hour >= ? THEN prompt_tokens + completion_tokens ELSE 0 END)"
            for _ in names
        )
        earliest = min(windows.values(), default=0)
        sql = f"SELECT key, {columns} FROM usage_hours WHERE hour >= ? GROUP BY key"
        params = (*windows.values(), earliest)
        totals_sql = "SELECT key, prompt_tokens + completion_tokens FROM key_totals"

        def run(cur: Any) -> tuple[list[Any], list[Any]]:
            return _fetch(cur, self._sql(sql), params) if names else [], _fetch(cur, totals_sql, ())

        windowed, totals = self._transaction(run)
        spent: dict[str, dict[str, int]] = {k: {"total": int(t)} for k, t in totals}
        for key, *sums in windowed:
            spent.setdefault(key, {"total": 0}).update(
                {name: int(value or 0) for name, value in zip(names, sums, strict=True)}
            )
        return spent

    # -- the connection ---------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def _transaction(self, run: Any) -> Any:
        """``run(cursor)`` in one transaction. A failure before the COMMIT is sent raises a
        :class:`LedgerError` with ``maybe_written=False``; a failed COMMIT (its answer lost:
        the server may have committed) one with ``maybe_written=True``."""
        try:
            conn = self._connection()
            cur = conn.cursor()
            try:
                result = run(cur)
            finally:
                cur.close()
        except LedgerError as exc:
            self.close()
            exc.maybe_written = False
            raise
        except Exception as exc:  # the driver's own errors: one line, the connection renewed
            self.close()
            raise self._wrapped(exc, maybe_written=False) from exc
        try:
            conn.commit()
        except Exception as exc:
            self.close()
            raise self._wrapped(exc, maybe_written=True) from exc
        return result

    def _wrapped(self, exc: Exception, *, maybe_written: bool) -> LedgerError:
        message = f"the ledger at {self.where}: {_first_line(exc)}"
        return LedgerError(message, maybe_written=maybe_written)

    def _connection(self) -> _Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except LedgerError:
                raise
            except Exception as exc:
                raise LedgerError(
                    f"cannot open the ledger at {self.where}: {_first_line(exc)}"
                ) from exc
        return self._conn

    def _connect(self) -> _Connection:
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            assert path is not None
            if not path.parent.is_dir():
                raise LedgerError(f"cannot open the ledger at {self.where}: no such directory")
            conn = sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint
            return conn
        try:
            import psycopg
        except ImportError:
            raise LedgerError(
                "a PostgreSQL ledger needs psycopg: pip install 'vkit[postgres]'"
            ) from None
        return psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)


def _fetch(cur: Any, sql: str, params: Iterable[object]) -> list[Any]:
    cur.execute(sql, tuple(params))
    return list(cur.fetchall())


def _values(row: UsageRow) -> tuple[object, ...]:
    return (
        row.key,
        row.hour,
        row.model,
        row.adapter,
        row.backend,
        row.requests,
        row.prompt_tokens,
        row.completion_tokens,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _redacted(url: str) -> str:
    """``url`` without a password (``postgresql://user:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
