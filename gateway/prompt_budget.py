"""Count a request's prompt within a time budget, and large bodies off the event loop.

A model's tokenizer and chat template make counting cost what the body makes it cost:
63 prompts of 65,536 characters took 1.6-3 s to tokenize, 120,000 one-character messages
0.13-0.66 s to render, a 600,000-integer tool schema 0.6 s to dump indented (a shared
2-vCPU VM, 2026-12-06, ``bench/prompt_count.py --hostile``; docs/gateway-cost.md). On the
event loop that is time every other request waits. :class:`CountBudget` bounds it two ways:

- every count gets ``seconds`` (``tokenizers.count_budget``): the counter looks at a
  :class:`gateway.deadline.Deadline` between texts and while the template renders, and a
  count that runs out is the ``fallback``'s, the byte bound
  (:class:`gateway.prompt_tokens.ByteBound`): a proven upper bound, so the limiter reserves
  too much for such a body, never too little;
- a body over ``inline_bytes`` (``tokenizers.count_inline_bytes``) is counted on a worker
  thread (``workers`` of them, 2 by default), so its budget is spent beside the loop, which
  keeps answering others: the tokenizer releases the GIL while it encodes, and Python code
  on the thread hands the GIL back to the loop every 5 ms (``sys.getswitchinterval``).
  Small bodies, nearly all of them, are counted inline: a thread hop costs ~50-100 us,
  more than counting a small body does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.deadline import Deadline, DeadlineExceeded
from gateway.prompt_tokens import ByteBound, PromptCounter


@dataclass(slots=True, kw_only=True)
class CountBudget:
    """``count(counter, data, size)``: ``counter``'s count within ``seconds``, else
    ``fallback``'s. :meth:`close` stops the worker threads (the gateway's shutdown)."""

    seconds: float = 0.1
    fallback: PromptCounter = field(default_factory=ByteBound)
    inline_bytes: int = 16384
    workers: int = 2
    clock: Callable[[], float] = time.monotonic
    exhausted: int = 0  # counts that ran out of budget (the fallback counted them)
    _executor: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    async def count(self, counter: PromptCounter, data: Mapping[str, Any], size: int) -> int:
        """The prompt tokens of ``data`` (a body of ``size`` bytes)."""
        if size <= self.inline_bytes:
            return self.within(counter, data)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="vkit-count")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.within, counter, data)

    def within(self, counter: PromptCounter, data: Mapping[str, Any]) -> int:
        """``counter``'s count, from now to ``seconds`` from now, else the fallback's."""
        if type(counter) is ByteBound:  # it looks at no deadline: none is made (~1 us)
            return counter.count(data)
        try:
            return counter.count(data, Deadline.after(self.seconds, self.clock))
        except DeadlineExceeded:
            self.exhausted += 1
            return self.fallback.count(data)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
