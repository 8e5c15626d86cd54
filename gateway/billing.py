"""Billing one exchange: the tokens a request used, settled on its lease and counted.

:func:`tokens_to_bill` reads the two records, :class:`gateway.admission.Admitted` (what
admission estimated and reserved) and :class:`gateway.exchange.Outcome` (what the upstream
reported): the upstream's usage when it reported any (for a cut stream, its per-chunk
usage up to the last chunk). An answer that carried no usage bills the whole reservation
and counts in ``usage_missing``; a stream cut before any usage came, the estimate and the
content events relayed; a client gone before any answer, the estimate (what vLLM may have
prefilled). :func:`settle` gives the lease back with that count (the answer is out by then:
a failed settle is logged, never turned into an error) and counts the tokens per key, and in
the usage ledger when there is one (:mod:`gateway.ledger`; requests billed no token are not
recorded there). A request the spill-over endpoint answered (:mod:`gateway.spill`) is billed
the same way, under that endpoint's name: the ledger's ``backend``, and
``spilled_tokens_total``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from gateway.metrics import GatewayMetrics
from gateway.spill_settings import LOCAL

if TYPE_CHECKING:
    from gateway.admission import Admitted
    from gateway.exchange import Outcome

log = logging.getLogger("vkit.gateway.billing")


class UsageRecorder(Protocol):
    """What billing asks of :class:`gateway.ledger.Ledger`: one request's tokens counted."""

    def record(
        self, key: str, model: str, prompt: int, completion: int, backend: str = ...
    ) -> None: ...


async def settle(
    admitted: Admitted,
    outcome: Outcome,
    metrics: GatewayMetrics,
    ledger: UsageRecorder | None = None,
) -> None:
    """Settle ``admitted``'s lease with the tokens it used, and count them (and, with a
    ledger, record them there: a dict update)."""
    prompt, completion = tokens_to_bill(admitted, outcome, metrics)
    backend = outcome.backend
    if ledger is not None and prompt + completion:
        ledger.record(admitted.key_name, admitted.model, prompt, completion, backend)
    try:
        await admitted.lease.settle(prompt + completion)
    except Exception:  # the answer is out; a failed settle must not turn it into a 500
        log.exception("settling the lease of key %s failed", admitted.key_name)
    metrics.count_tokens(admitted.key_name, prompt, completion)
    if backend != LOCAL:
        metrics.count_spilled_tokens(backend, admitted.key_name, prompt, completion)


def tokens_to_bill(
    admitted: Admitted, outcome: Outcome, metrics: GatewayMetrics
) -> tuple[int, int]:
    """(prompt, completion) tokens to bill for one exchange (see the module's docstring)."""
    meter = outcome.meter
    if meter is not None:
        if meter.reported:
            prompt = meter.prompt_tokens
            prompt = admitted.prompt_estimate if prompt is None else prompt
            return prompt, meter.completion_tokens
        if not meter.content_events:  # nothing came: what vLLM may have prefilled
            return admitted.prompt_estimate, 0
        metrics.usage_missing.labels(admitted.key_name).inc()
        if meter.done:  # a whole stream without usage: nothing says it was smaller
            return _reservation(admitted)
        return admitted.prompt_estimate, meter.content_events
    usage = outcome.usage
    if usage is not None:
        return usage.prompt_tokens, usage.completion_tokens
    if outcome.status == 200:  # an answer whose usage is missing or unreadable
        metrics.usage_missing.labels(admitted.key_name).inc()
        return _reservation(admitted)
    if outcome.status == 499:  # gone while the upstream was working on it
        return admitted.prompt_estimate, 0
    return 0, 0


def _reservation(admitted: Admitted) -> tuple[int, int]:
    """The reservation as (prompt, completion): the estimate, and the rest."""
    prompt = admitted.prompt_estimate
    return prompt, max(admitted.lease.reserved - prompt, 0)
