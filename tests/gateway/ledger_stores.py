"""Fixtures: a ledger store on real SQLite (unit) and on a real PostgreSQL server
(integration), as one parametrised ``ledger_store``; the server is started once per session.
:func:`a_ledger` builds a running ledger on a URL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from gateway.ledger import Ledger, LedgerStore, open_store
from tests.gateway.postgres_process import PostgresProcess, fresh_database, running_postgres

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    pytest.importorskip("psycopg")
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


def ledger_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty ledger database of ``kind`` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    server: PostgresProcess = request.getfixturevalue("postgres_server")
    return fresh_database(server, f"ledger_{next(_names)}")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return ledger_url(request.param, tmp_path, request)


@pytest.fixture
def ledger_store(store_url: str) -> Iterator[LedgerStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def a_ledger(
    url: str,
    *,
    flush: float = 1.0,
    refresh: float = 1.0,
    backlog: int = 100,
    prices: Mapping[str, float] | None = None,
    started: bool = True,
) -> Ledger:
    """A :class:`Ledger` on ``url`` (migrated when ``started``)."""
    ledger = Ledger(
        open_store(url),
        flush_interval=flush,
        budget_refresh=refresh,
        max_backlog_rows=backlog,
        prices=prices or {},
    )
    if started:
        ledger.start()
    return ledger


def overshoot_and_bound(
    served: list[tuple[float, int]], budget: int, window_s: float, clients: int
) -> tuple[int, int]:
    """Tokens served past ``budget``, and the bound docs/usage-ledger.md states: what was
    served in ``window_s`` (flush + refresh + the write's time) after the budget was reached,
    plus one request in flight per client. ``served``: (when answered, tokens) of each 200."""
    total, reached_at = 0, None
    for at, tokens in sorted(served):
        total += tokens
        if reached_at is None and total >= budget:
            reached_at = at
    assert reached_at is not None, f"the budget was never reached: {total} tokens served"
    window = sum(t for at, t in served if reached_at < at <= reached_at + window_s)
    return total - budget, window + clients * max(t for _, t in served)
