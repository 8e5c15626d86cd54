"""The readiness rule of :mod:`launcher.supervision.readiness`, asked over blocking HTTP (and
``/metrics`` sampled for the progress rule of :mod:`launcher.supervision.progress`).

``vkit launch`` (its systemd notifications) and ``vkit up`` wait on a replica with
:class:`VllmProbe`; the gateway asks the same rule with its own asyncio client
(:mod:`gateway.health`) and never imports this module, nor httpx.

    >>> check = ReadinessCheck.of(models=["tiny-llama"])
    >>> VllmProbe("http://127.0.0.1:8000", check).ready()   # doctest: +SKIP
"""

from __future__ import annotations

import httpx

from launcher.supervision.progress import MetricsSample, parse_metrics
from launcher.supervision.readiness import HEALTH_PATH, MODELS_PATH, ReadinessCheck, Verdict

METRICS_PATH = "/metrics"


class VllmProbe:
    """:class:`ReadinessCheck` against one replica over blocking HTTP (bounded, no raise)."""

    def __init__(
        self, base_url: str, check: ReadinessCheck | None = None, timeout_s: float = 5.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.check = check if check is not None else ReadinessCheck()
        self._timeout = timeout_s

    def _get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(
                self.base_url + path, headers=self.check.headers, timeout=self._timeout
            )
        except httpx.HTTPError:
            return None

    def healthy(self) -> bool:
        """``/health`` is 200: the engine is alive (what a watchdog ping needs)."""
        response = self._get(HEALTH_PATH)
        return response is not None and response.status_code == 200

    def progress_sample(self) -> MetricsSample | None:
        """``/metrics`` reduced by the progress rule; ``None`` when it did not answer 200."""
        response = self._get(METRICS_PATH)
        if response is None or response.status_code != 200:
            return None
        return parse_metrics(response.text)

    def verdict(self) -> Verdict:
        health = self._get(HEALTH_PATH)
        health_status = health.status_code if health is not None else None
        if health_status != 200:
            return self.check.verdict(health_status, None, None)
        listing = self._get(MODELS_PATH)
        if listing is None:
            return self.check.verdict(health_status, None, None)
        return self.check.verdict(health_status, listing.status_code, listing.content)

    def ready(self) -> bool:
        return self.verdict().ready
