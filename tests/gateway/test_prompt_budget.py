"""Counting within a budget: a hostile body's count does not hold the event loop (large
bodies are counted on a worker thread, every count stops at its deadline) and a count that
runs out of time reserves the byte bound instead, the proven upper bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat_template import ChatTemplate
from gateway.deadline import Deadline, DeadlineExceeded
from gateway.prompt_budget import CountBudget
from gateway.prompt_tokens import ByteBound, TokenizerCounter
from gateway.settings import TokenizerSettings
from gateway.utf8_length import JSON_BATCH, json_bytes, text_bytes
from tests.gateway.conftest import AUTH, GatewayFactory

MODEL = "tiny-llama"
# Prompts of 65,536 characters, each under max_tokenized_chars, so each one tokenized (the
# issue sent 63: 0.4-1.5 s of one event loop); 15 keep the body under 1 MiB, which the
# gateway forwards without aiohttp's warning about large bodies.
HOSTILE = {"model": MODEL, "prompt": ["ab c" * 16384] * 15, "max_tokens": 1}
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path) -> TokenizerCounter:
    return TokenizerCounter.load(tiny_model_dir, TokenizerSettings())


class SteppingClock:
    """Each reading is ``step`` seconds after the one before."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_hostile_count_does_not_hold_another_requests_answer(
    start_gateway: GatewayFactory, counter: TokenizerCounter
) -> None:
    """Small requests from another thread (a client the gateway's loop does not run) while
    two hostile bodies are counted: none waits anywhere near as long as one full count
    takes (on the loop, the first waited for all of it: 0.43 s here)."""
    started = time.perf_counter()
    counter.count(HOSTILE)
    full = time.perf_counter() - started  # ~0.25-0.5 s, more on a loaded machine
    gw = await start_gateway(prompt_counter=counter, tokenizers={"count_budget": 0.05})

    def small_requests() -> list[float]:
        latencies = []
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            for _ in range(8):
                started = time.perf_counter()
                answer = client.post("/v1/chat/completions", json=SMALL, headers=AUTH)
                assert answer.status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
        return latencies

    hostile = [
        asyncio.create_task(gw.client.post("/v1/completions", json=HOSTILE, headers=AUTH))
        for _ in range(2)
    ]
    latencies = await asyncio.to_thread(small_requests)
    assert [(await answer).status_code for answer in hostile] == [200, 200]
    assert max(latencies) < full / 2, (full, latencies)
    # the budget ran out: the hostile body reserved its byte bound, one token per prompt more
    reserved = sorted(lease.reserved for lease in gw.limiter.leases)
    assert reserved[-2:] == [ByteBound().count(HOSTILE) + 15] * 2


def test_a_count_past_its_budget_is_the_byte_bound(counter: TokenizerCounter) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}] * 4}
    roomy = CountBudget(seconds=10.0, fallback=ByteBound())
    assert roomy.within(counter, chat) == counter.count(chat) < ByteBound().count(chat)
    # every reading of the clock a second later: the first look at the deadline finds it past
    spent = CountBudget(seconds=0.5, fallback=ByteBound(), clock=SteppingClock(1.0))
    assert spent.within(counter, chat) == ByteBound().count(chat)
    prompts = {"model": MODEL, "prompt": ["Tell me a story."] * 3}
    assert spent.within(counter, prompts) == ByteBound().count(prompts)


async def test_large_bodies_are_counted_off_the_event_loop(counter: TokenizerCounter) -> None:
    import threading

    seen: list[str] = []

    class Where:
        def count(self, data: Any, deadline: Deadline | None = None) -> int:
            seen.append(threading.current_thread().name)
            return 7

    budget = CountBudget(seconds=1.0, fallback=ByteBound(), inline_bytes=100)
    try:
        assert await budget.count(Where(), SMALL, size=100) == 7
        assert await budget.count(Where(), SMALL, size=101) == 7
    finally:
        budget.close()
    assert seen[0] == threading.current_thread().name
    assert seen[1] != seen[0]


def test_the_template_stops_rendering_at_the_deadline() -> None:
    template = ChatTemplate.from_sources(
        {"default": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"}
    )
    data = {"messages": [{"role": "user", "content": "a"}] * 5000}
    assert template.render(data).count("\n") == 5000
    with pytest.raises(DeadlineExceeded):
        template.render(data, Deadline(at=0.5, clock=SteppingClock(1.0)))


def test_tojson_stops_at_the_deadline() -> None:
    template = ChatTemplate.from_sources({"default": "{{ tools | tojson(indent=4) }}"})
    schema = {"type": "object", "enum": list(range(50000))}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    data = {"messages": [{"role": "user", "content": "a"}], "tools": tools}
    assert len(template.render(data)) > 50000
    with pytest.raises(DeadlineExceeded):
        template.render(data, Deadline(at=0.5, clock=SteppingClock(1.0)))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=30,
)


@given(JSON.filter(lambda value: value is not None))  # None: an absent field, 0
@settings(max_examples=300, deadline=None)
def test_json_bytes_is_the_bound_of_the_indented_dump(value: Any) -> None:
    assert json_bytes(value) == text_bytes(json.dumps(value, ensure_ascii=False, indent=4))


def test_the_byte_bound_of_a_huge_tool_schema_still_bounds_it() -> None:
    """A 600,000-integer schema: the byte bound once dumped it indented, in pure Python
    (~0.6 s here); now the C encoder's compact dump and a walk of the containers (its time:
    ``bench/prompt_count.py --hostile``, not a timed test). Every integer is a token at
    least."""
    tools = [{"type": "function", "function": {"name": "f", "enum": list(range(600_000))}}]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "tools": tools}
    assert ByteBound().count(chat) >= 600_000


@pytest.mark.parametrize("text", ["a", "é", "ﷺ"])
def test_json_bytes_past_one_batch_is_an_upper_bound(text: str) -> None:
    """Past one batch of scalars the count adds up each batch's most over the normal forms:
    exact for ASCII, never below the whole's."""
    value = {"enum": [text] * (JSON_BATCH * 2 + 1), "nested": [[1, text]] * 3}
    whole = text_bytes(json.dumps(value, ensure_ascii=False, indent=4))
    assert json_bytes(value) >= whole
    if text.isascii():
        assert json_bytes(value) == whole


def test_tojson_of_a_large_value_renders_as_json_does() -> None:
    template = ChatTemplate.from_sources({"default": "{{ tools | tojson }}"})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"enum": [1] * 600}}}]
    data = {"messages": [{"role": "user", "content": "a"}], "tools": tools}
    far = Deadline.after(60.0)
    assert template.render(data, far) == template.render(data)  # piece by piece, same text
