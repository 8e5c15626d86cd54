"""Gateways sharing a PostgreSQL ledger (tier ``integration``): one budget for all of them,
and a database stopped for 30 s under load fails no request and is caught up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.ledger import KeyBudgets, Ledger, Limit
from tests.gateway.conftest import SECRET, GatewayFactory
from tests.gateway.doubles import Key
from tests.gateway.ledger_stores import a_ledger, overshoot_and_bound
from tests.gateway.postgres_process import PostgresProcess, fresh_database, running_postgres

pytestmark = pytest.mark.integration

BODY = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {SECRET}"}


def ledger_on(url: str, flush: float = 0.1, refresh: float = 0.1) -> Ledger:
    return a_ledger(url, flush=flush, refresh=refresh, backlog=1000, prices={"tiny-llama": 3.0})


async def test_two_gateways_enforce_one_monthly_budget(postgres_server: PostgresProcess) -> None:
    url = fresh_database(postgres_server, "two_gateways")
    budgets = KeyBudgets(month=Limit(tokens=1000))
    first, second = ledger_on(url), ledger_on(url)
    try:
        first.record("alice", "tiny-llama", 300, 300)  # each under the budget on its own
        second.record("alice", "tiny-llama", 300, 300)
        assert first.refusal("alice", budgets) is None
        assert second.refusal("alice", budgets) is None
        assert await first.flush() and await second.flush()  # both written
        await asyncio.sleep(0.15)  # budget_refresh: the next flushes read the budgets back
        assert await first.flush() and await second.flush()
        for ledger in (first, second):  # each has read the other's usage from the database
            refused = ledger.refusal("alice", budgets)
            assert refused is not None and refused.headers["x-budget-period"] == "month"
        # the overshoot: what the gateways spent between their last reads (here 200 tokens)
        assert first.book.spent["alice"].tokens["month"] == 1200
        assert first.book.spent["alice"].dollars["month"] == pytest.approx(3.0)
    finally:
        await first.close()
        await second.close()


async def test_a_database_stopped_30_s_under_load_fails_no_request_and_catches_up(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with running_postgres(tmp_path) as server:
        url = fresh_database(server, "outage")
        ledger = ledger_on(url, flush=0.2, refresh=0.2)
        gw = await start_gateway(keys={SECRET: Key("alice")}, ledger=ledger)
        statuses: list[int] = []
        tokens = 0

        async def load(seconds: float) -> None:
            nonlocal tokens
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                answer = await gw.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    tokens += answer.json()["usage"]["total_tokens"]
                await asyncio.sleep(0.01)

        await load(1.0)
        await asyncio.to_thread(server.stop)
        await load(30.0)
        assert ledger.failures > 0 and len(ledger.backlog) > 0  # the rows wait
        await asyncio.to_thread(server.start)
        await load(1.0)
        async with asyncio.timeout(15):
            while ledger.book.unwritten:
                await asyncio.sleep(0.1)
        assert set(statuses) == {200}
        (row,) = ledger.store.usage(0, 2**40)
        assert (row.requests, row.tokens) == (len(statuses), tokens)


async def test_two_gateways_under_load_stop_a_key_within_the_stated_overshoot(
    start_gateway: GatewayFactory, postgres_server: PostgresProcess
) -> None:
    """Two gateways, one PostgreSQL ledger, one key with a monthly budget, load on both: once
    the key's tokens reach the budget, both refuse it within flush_interval + budget_refresh
    (+ the write's own time, 0.3 s here) -- the overshoot docs/usage-ledger.md states."""
    url = fresh_database(postgres_server, "two_under_load")
    flush = refresh = 0.1
    budget = 2000
    key = Key("alice", budgets=KeyBudgets(month=Limit(tokens=budget)))
    gateways = [
        await start_gateway(keys={SECRET: key}, ledger=ledger_on(url, flush, refresh))
        for _ in range(2)
    ]
    served: list[tuple[float, int]] = []  # (when answered, tokens)
    refused: list[str] = []
    clock = asyncio.get_running_loop().time

    async def client(index: int) -> None:
        gw = gateways[index]
        async with asyncio.timeout(60):
            while True:
                answer = await gw.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
                if answer.status_code == 429:
                    refused.append(answer.json()["error"]["code"])
                    return
                assert answer.status_code == 200
                served.append((clock(), answer.json()["usage"]["total_tokens"]))

    await asyncio.gather(*(client(i) for i in (0, 1, 0, 1)))  # two clients per gateway
    assert refused == ["budget_exceeded"] * 4
    overshoot, bound = overshoot_and_bound(served, budget, flush + refresh + 0.3, clients=4)
    assert overshoot <= bound, (overshoot, bound)
