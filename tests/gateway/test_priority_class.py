"""Priority classes per key: the class goes upstream as the body's ``priority`` (vLLM's
``--scheduling-policy priority``, lower first), a client never gets an earlier turn than its
key's class, and the hold lets interactive requests go first (gateway.priority_class)."""

from __future__ import annotations

import asyncio
import doctest
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import gateway.priority_class as priority_class_module
from gateway.keyfile import KeyFileError, parse_keys
from gateway.metrics import GatewayMetrics
from gateway.priority_class import BATCH, INTERACTIVE, forwarded_priority
from gateway.routing.holding import Hold
from gateway.settings import HoldSettings
from gateway.upstreams import UpstreamPool
from tests.gateway.conftest import AUTH, SECRET, GatewayFactory
from tests.gateway.doubles import Key
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BATCH_SECRET = "sk-test-bob"
BATCH_AUTH = {"Authorization": f"Bearer {BATCH_SECRET}"}
KEYS = {SECRET: Key("alice"), BATCH_SECRET: Key("bob", scheduling_priority=BATCH)}
DIGEST = "a" * 64


def test_module_examples() -> None:
    assert doctest.testmod(priority_class_module).failed == 0


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("", INTERACTIVE),
        ("priority: interactive", INTERACTIVE),
        ("priority: batch", BATCH),
        ("priority: 7", 7),
        ("priority: -3", -3),
    ],
)
def test_a_keys_class_is_read_from_the_keys_file(line: str, value: int) -> None:
    text = f"keys:\n  - name: a\n    sha256: {DIGEST}\n    {line}\n"
    assert parse_keys(text)[0].scheduling_priority == value


@pytest.mark.parametrize("bad", ["urgent", "true", "'5'", "1.5"])
def test_a_class_that_is_neither_a_name_nor_an_integer_is_refused_with_its_line(bad: str) -> None:
    text = f"keys:\n  - name: a\n    sha256: {DIGEST}\n    priority: {bad}\n"
    with pytest.raises(KeyFileError, match=r"line 4: keys\.0\.priority"):
        parse_keys(text)


@pytest.mark.parametrize(
    ("body", "floor", "sent"),
    [
        ({}, INTERACTIVE, None),  # vLLM's default: the body goes as it is
        ({}, BATCH, BATCH),
        ({"priority": BATCH + 5}, BATCH, None),  # a later turn is the client's to ask
        ({"priority": -5}, BATCH, BATCH),  # an earlier one is not
        ({"priority": -5}, INTERACTIVE, INTERACTIVE),
        ({"priority": True}, INTERACTIVE, INTERACTIVE),  # not an integer
        ({"priority": "0"}, BATCH, BATCH),
        ({"priority": 150.0}, BATCH, BATCH),
    ],
)
def test_the_client_may_ask_for_a_later_turn_never_an_earlier_one(
    body: dict[str, Any], floor: int, sent: int | None
) -> None:
    assert forwarded_priority(body, floor) == sent


async def test_each_key_sends_its_class_upstream(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(keys=KEYS)
    plain = json.dumps(CHAT).encode()
    for auth in (AUTH, BATCH_AUTH):
        answer = await gw.client.post("/v1/chat/completions", content=plain, headers=auth)
        assert answer.status_code == 200, answer.text
    interactive, batch = upstream.raw_bodies
    assert interactive == plain  # untouched: vLLM's default priority is interactive
    assert json.loads(batch)["priority"] == BATCH


async def test_a_body_naming_priority_twice_goes_upstream_with_the_value_checked(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(keys=KEYS)
    # Python keeps the last value (5: allowed); a parser keeping the first would read -100.
    twice = b'{"priority": -100, "model": "tiny-llama", "max_tokens": 2, "priority": 5, '
    twice += b'"messages": [{"role": "user", "content": "hi"}]}'
    answer = await gw.client.post("/v1/chat/completions", content=twice, headers=AUTH)
    assert answer.status_code == 200, answer.text
    sent = upstream.raw_bodies[-1]
    assert sent.count(b'"priority"') == 1 and json.loads(sent)["priority"] == 5
    # and the other order: the last (-100, earlier than batch) is clamped to the class
    twice = twice.replace(b'"priority": -100', b'"priority": 9').replace(b": 5,", b": -100,")
    answer = await gw.client.post("/v1/chat/completions", content=twice, headers=BATCH_AUTH)
    assert answer.status_code == 200, answer.text
    sent = upstream.raw_bodies[-1]
    assert sent.count(b'"priority"') == 1 and json.loads(sent)["priority"] == BATCH


async def test_replicas_on_fcfs_get_no_priority(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway(keys=KEYS, upstream_priority=False)
    answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=BATCH_AUTH)
    assert answer.status_code == 200, answer.text
    assert "priority" not in upstream.bodies[-1]


async def test_requests_released_together_from_the_hold_go_interactive_first() -> None:
    pool = UpstreamPool(["http://127.0.0.1:9"])
    (replica,) = pool.upstreams
    pool.record(replica, False, frozenset())  # probed, not ready: every request is held
    hold = Hold(
        HoldSettings(max_wait=5),
        pool,
        GatewayMetrics(CollectorRegistry()),
        asyncio.get_event_loop().time,
    )
    released: list[str] = []

    async def held(name: str, priority: int) -> None:
        await hold.until_ready(None, priority)
        released.append(name)

    arrivals = [("b1", BATCH), ("i1", INTERACTIVE), ("b2", BATCH), ("x", 50), ("i2", INTERACTIVE)]
    tasks = []
    for name, priority in arrivals:
        tasks.append(asyncio.create_task(held(name, priority)))
        await asyncio.sleep(0)  # each arrives, in this order, and is held
    assert pool.waiting == len(arrivals) and released == []
    pool.record(replica, True, frozenset({"tiny-llama"}))
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert released == ["i1", "i2", "x", "b1", "b2"]  # by class, first come first served within
