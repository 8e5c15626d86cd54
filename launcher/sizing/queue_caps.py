"""vLLM's admission caps, sized from a time-to-first-token target: :func:`size_queue_caps`.

    >>> size_queue_caps(prompt_tokens=500, prefill_s=0.05, step_s=0.02, max_num_seqs=64,
    ...                 ttft_target_s=2.0)
    QueueCaps(max_num_queued_tokens=19800, max_num_queued_reqs=103)

vLLM (0.32) refuses a request with a 503 before it starts it once the replica holds
``--max-num-queued-reqs`` requests (waiting and running) or ``--max-num-queued-tokens`` prompt
tokens still in prefill (docs/vllm-server.md#admission-caps). A prompt admitted behind a
backlog of ``Q`` prefill tokens waits about ``Q / prefill rate`` plus its own engine step
before its first token, so the backlog that keeps the time to first token within the target
``T`` is::

    max_num_queued_tokens = prefill tok/s x (T - one step)
    max_num_queued_reqs   = max_num_seqs + max_num_queued_tokens // prompt tokens

(the running batch, plus as many typical prompts as the backlog holds). A target below one
prompt's own prefill plus one step cannot be met by any queue: :class:`TtftTargetUnreachable`.
Pure: the prefill time and the step come from :mod:`launcher.sizing.speed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import InvalidInput

__all__ = [
    "DEFAULT_TTFT_TARGET_S",
    "QueueCaps",
    "TtftTargetUnreachable",
    "check_ttft_target",
    "size_queue_caps",
]

# Two seconds: a chat user reads a reply that starts within ~2 s as prompt (the usual
# interactive TTFT objective), and at the speed model's prefill rates (thousands of prompt
# tokens per second on one GPU) it still leaves a backlog of several typical prompts.
DEFAULT_TTFT_TARGET_S = 2.0


class TtftTargetUnreachable(InvalidInput):
    """A time-to-first-token target shorter than one prompt's own prefill and engine step."""


@dataclass(frozen=True, slots=True)
class QueueCaps:
    """vLLM's ``--max-num-queued-tokens`` and ``--max-num-queued-reqs`` for one replica."""

    max_num_queued_tokens: int
    max_num_queued_reqs: int


def size_queue_caps(
    *,
    prompt_tokens: int,
    prefill_s: float,
    step_s: float,
    max_num_seqs: int,
    ttft_target_s: float,
) -> QueueCaps | None:
    """The caps that keep the time to first token within ``ttft_target_s`` (module
    docstring); ``None`` when one prompt's prefill (``prefill_s`` for ``prompt_tokens``)
    plus one engine step (``step_s``) already exceeds it."""
    budget = ttft_target_s - step_s
    if prefill_s <= 0 or prefill_s > budget:
        return None
    tokens = int(prompt_tokens / prefill_s * budget)
    return QueueCaps(
        max_num_queued_tokens=tokens,
        max_num_queued_reqs=max_num_seqs + tokens // prompt_tokens,
    )


def check_ttft_target(
    *, target: str, prompt_tokens: int, prefill_s: float, step_s: float, ttft_target_s: float
) -> None:
    """Raise :class:`TtftTargetUnreachable` (one line) when no queue meets the target."""
    if prefill_s + step_s <= ttft_target_s:
        return
    raise TtftTargetUnreachable(
        f"a time-to-first-token target of {ttft_target_s:g} s cannot be met on {target}: "
        f"one {prompt_tokens}-token prompt alone takes {prefill_s + step_s:.2f} s "
        f"(prefill {prefill_s:.2f} s + one step {step_s:.3f} s); "
        "raise --ttft-target, shorten the prompts or use a faster GPU"
    )
