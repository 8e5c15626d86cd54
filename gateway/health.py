"""Background readiness probing of the upstreams.

Whether an upstream is ready is decided by the one rule of
:mod:`launcher.supervision.readiness` (``/health`` 200 and ``/v1/models`` listing a model --
each of ``health.expected_models`` when set -- asked with the upstream API key), the same
rule ``vkit launch`` and ``vkit up`` use; this module only sends the two requests through the
gateway's own pooled client. Probes run every ``health.interval`` seconds in one task
started by the app's lifespan (every ``holding_interval`` while requests are held for a
ready upstream, :class:`gateway.settings.HoldSettings`); requests never wait on them.

Ready means the model generates. vLLM's ``/health`` can stay 200 after a GPU fault (vLLM
issue 36960), so with ``health.canary_interval`` set, an upstream the rule calls ready must
also pass a canary: a one-token completion (``POST /v1/completions``, ``max_tokens: 1``,
the upstream API key). A passing canary counts for ``canary_interval`` seconds and while
the rule's verdict holds; a failed one takes the upstream out and is tried again at the
next probe. Canary tokens are billed to no key and counted in no request metric; they
have their own: ``vkit_gateway_canary_seconds{upstream}`` and
``vkit_gateway_canary_failures_total{upstream}``.

Nothing stops the probing: any answer (a body that breaks off, a head that is not HTTP, a
reset, silence) and any fault of a probe is a "not ready" verdict for that upstream alone,
logged once when its state changes.

The model list read for readiness is also what the upstream serves: its base models and
LoRA adapters (:mod:`gateway.served_models`), recorded in the pool for routing by ``model``
and the gateway's own ``/v1/models``; an adapter loaded on a replica at run time is routed
to from the next probe on. The canary asks a base model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from gateway.client import (
    UpstreamBroken,
    UpstreamClient,
    UpstreamClientError,
    UpstreamConnectError,
)
from gateway.metrics import GatewayMetrics
from gateway.served_models import ServedModels, read_served
from gateway.settings import HealthSettings
from gateway.upstreams import Upstream, UpstreamPool
from launcher.supervision.readiness import HEALTH_PATH, MODELS_PATH, ReadinessCheck, Verdict

log = logging.getLogger("vkit.gateway.health")

CANARY_PATH = "/v1/completions"


class UpstreamProber:
    def __init__(
        self,
        settings: HealthSettings,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: GatewayMetrics,
        check: ReadinessCheck,
        clock: Callable[[], float] = time.monotonic,
        holding_interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.holding_interval = holding_interval
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.check = check
        self.clock = clock
        self._canary_headers = {**check.headers, "content-type": "application/json"}
        self._canary_passed_at: dict[str, float] = {}  # upstream label -> clock()
        self._misses: dict[str, int] = {}  # upstream label -> probes in a row with no answer

    async def run_forever(self) -> None:
        while True:
            await self.probe_all()
            await self._pause()

    async def _pause(self) -> None:
        """Until the next round; cut short once requests are held (every ``holding_interval``
        s it looks whether some are)."""
        step = self.holding_interval
        if step is None:
            await asyncio.sleep(self.settings.interval)
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        while (left := self._interval() - (loop.time() - began)) > 0:
            await asyncio.sleep(min(step, left))

    def _interval(self) -> float:
        """``health.interval``; ``holding_interval`` while requests wait for a ready one
        (of their model: others may be ready meanwhile)."""
        if self.pool.waiting and self.holding_interval is not None:
            return min(self.settings.interval, self.holding_interval)
        return self.settings.interval

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(u) for u in self.pool.upstreams))

    async def probe(self, upstream: Upstream) -> None:
        """Judge ``upstream`` and record the verdict; never raises (but for cancellation).

        A ready upstream that gives no answer in time (or breaks off) stays ready until
        ``failure_threshold`` probes in a row have missed: a replica busy with long
        generations can be slow to answer, and with every replica busy one slow probe each
        would refuse every request for a whole interval. An answer that says not ready,
        or a refused connection, counts at once."""
        try:
            verdict, answered, served = await self.judge(upstream)
        except Exception as exc:  # a fault in one probe must not end the probing of any
            reason = f"the probe failed ({type(exc).__name__}: {exc})"
            self._record(upstream, Verdict(False, frozenset(), reason), None, exc)
            return
        label = upstream.label
        if not verdict.ready and not answered and upstream.ready:
            misses = self._misses.get(label, 0) + 1
            if misses < self.settings.failure_threshold:
                self._misses[label] = misses
                log.debug(
                    "upstream %s missed a probe (%d of %d): %s",
                    label,
                    misses,
                    self.settings.failure_threshold,
                    verdict.reason,
                )
                return
        self._misses.pop(label, None)
        self._record(upstream, verdict, served)

    async def judge(self, upstream: Upstream) -> tuple[Verdict, bool, ServedModels | None]:
        """The readiness rule's verdict, and the canary's when it is on; whether it rests
        on an answer (False: nothing came back in time, or it broke off); and the model
        cards the upstream listed (``None``: no model list)."""
        verdict, answered, served = await self._readiness(upstream)
        if self.settings.canary_interval is None:
            return verdict, answered, served
        if not verdict.ready:
            self._canary_passed_at.pop(upstream.label, None)
            return verdict, answered, served
        passed_at = self._canary_passed_at.get(upstream.label)
        if passed_at is not None and self.clock() - passed_at < self.settings.canary_interval:
            return verdict, True, served
        failure = await self._canary(upstream, self._canary_model(verdict, served))
        if failure is not None:
            self._canary_passed_at.pop(upstream.label, None)
            return Verdict(False, verdict.models, f"the canary generation {failure}"), True, served
        self._canary_passed_at[upstream.label] = self.clock()
        return verdict, True, served

    def _canary_model(self, verdict: Verdict, served: ServedModels | None) -> str:
        """A base model the upstream serves (an adapter would test it, not the engine)."""
        names = self.check.expected_models or verdict.models
        bases = names & served.bases if served is not None else frozenset()
        return min(bases or names)

    def _record(
        self,
        upstream: Upstream,
        verdict: Verdict,
        served: ServedModels | None,
        error: Exception | None = None,
    ) -> None:
        ready = verdict.ready
        if ready != upstream.ready or not upstream.probed:
            state = "ready" if ready else "not ready"
            log.log(
                logging.INFO if ready else logging.WARNING,
                "upstream %s is %s: %s",
                upstream.label,
                state,
                verdict.reason,
                exc_info=error,
            )
        self.pool.record(upstream, ready, verdict.models, served)
        if not upstream.removed:  # dropped by discovery while it was probed: no series again
            self.metrics.upstream_up.labels(upstream.label).set(1 if ready else 0)

    async def _readiness(self, upstream: Upstream) -> tuple[Verdict, bool, ServedModels | None]:
        limit = self.settings.timeout
        try:
            async with asyncio.timeout(limit):
                health_status, _ = await self._get(upstream, HEALTH_PATH)
                if health_status != 200:
                    answered = health_status is not None
                    return self.check.verdict(health_status, None, None), answered, None
                models_status, body = await self._get(upstream, MODELS_PATH)
                verdict = self.check.verdict(health_status, models_status, body)
                served = read_served(body) if models_status == 200 else None
                return verdict, models_status is not None, served
        except TimeoutError:
            return Verdict(False, frozenset(), f"no answer within {limit:g} s"), False, None
        except UpstreamConnectError as exc:  # nothing listens: an answer of its own
            return Verdict(False, frozenset(), f"refused the connection ({exc})"), True, None

    async def _get(self, upstream: Upstream, path: str) -> tuple[int | None, bytes | None]:
        """Status and body; ``(None, None)`` when there was no whole answer. A refused
        connection raises UpstreamConnectError."""
        try:
            response = await self.client.send("GET", upstream.url + path, self.check.headers, None)
        except UpstreamConnectError:
            raise
        except UpstreamClientError:
            return None, None
        try:
            return response.status, await response.read()
        except UpstreamBroken:
            return None, None
        finally:
            response.release()

    async def _canary(self, upstream: Upstream, model: str) -> str | None:
        """``None`` when ``upstream`` generated a token for ``model``, else what went wrong."""
        settings = self.settings
        request = {"model": model, "prompt": settings.canary_prompt, "max_tokens": 1}
        url = upstream.url + CANARY_PATH
        began = self.clock()
        try:
            async with asyncio.timeout(settings.canary_timeout):
                response = await self.client.send(
                    "POST", url, self._canary_headers, json.dumps(request).encode()
                )
                try:
                    status, body = response.status, await response.read()
                finally:
                    response.release()
            failure = None if status == 200 and _generated(body) else f"answered {status}"
        except TimeoutError:
            failure = f"gave no answer within {settings.canary_timeout:g} s"
        except UpstreamClientError as exc:
            failure = f"failed ({exc})"
        if upstream.removed:
            return failure
        self.metrics.canary_seconds.labels(upstream.label).observe(self.clock() - began)
        if failure is not None:
            self.metrics.canary_failures.labels(upstream.label).inc()
        return failure


def _generated(body: bytes) -> bool:
    """A completion with at least one choice."""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    choices = answer.get("choices") if isinstance(answer, dict) else None
    return isinstance(choices, list) and bool(choices)
