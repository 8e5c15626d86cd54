"""The gateway's prompt count against real vLLM's ``usage.prompt_tokens`` (``-m engine``).

Every shape of ``bench/prompt_count.py`` (short, long, unicode, many messages, a system
prompt, content parts, chat options, token arrays, batch prompts) goes to a replica of the
tiny model directly; the tokenizer counter must never count below vLLM and at most 25%
above it for prompts of 100 tokens or more; the byte bound must never count below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.prompt_count import LONG_TOKENS, measure, prompt_shapes, report, summarize
from gateway.prompt_tokens import ByteBound, PromptCounter, TokenizerCounter
from gateway.settings import TokenizerSettings

pytestmark = pytest.mark.engine


async def test_prompt_counts_are_never_under_vllm_and_close_above_100_tokens(
    vllm_replicas: list[Any], tiny_model_dir: Path
) -> None:
    counters: dict[str, PromptCounter] = {
        "tokenizer": TokenizerCounter.load(tiny_model_dir, TokenizerSettings()),
        "byte bound": ByteBound(),
    }
    rows = await measure(vllm_replicas[0].base_url, prompt_shapes(), counters)
    print("\n" + "\n".join(report(rows)))
    under = [
        (r.shape.name, r.real, dict(r.counted)) for r in rows if min(r.counted.values()) < r.real
    ]
    assert not under, f"counted below vLLM: {under}"
    long = summarize(rows, "tokenizer", LONG_TOKENS)
    assert long.prompts >= 15, "the shapes include enough long prompts"
    assert long.worst_over_pct <= 25.0, report(rows)
