"""Is this vLLM replica ready? One answer for the gateway's prober, ``vkit launch``'s systemd
notifications and ``vkit up``.

Ready means: ``GET /health`` answers 200 *and* ``GET /v1/models`` answers 200 and lists a
model -- every one of ``expected_models`` when some are named. ``/health`` alone is not
enough: it goes 200 as soon as the HTTP server binds, before the model is served
(REFERENCE section 1). vLLM's ``--api-key`` guards every path under ``/v1``, so the model
list is asked for with the key (``Authorization: Bearer``); without it a protected replica
answers 401 and is never ready.

The rule itself is pure (:meth:`ReadinessCheck.verdict`); each caller brings its own HTTP
client: :class:`VllmProbe` here (blocking, httpx) for ``vkit launch`` and ``vkit up``, the
gateway's pooled asyncio client in :mod:`gateway.health`.

    >>> check = ReadinessCheck(api_key="s3cret", expected_models=frozenset({"tiny-llama"}))
    >>> check.verdict(200, 200, b'{"data": [{"id": "tiny-llama"}]}').ready
    True
    >>> VllmProbe("http://127.0.0.1:8000", check).ready()   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"
BEARER = "Bearer "  # the key's scheme on /v1/models


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one readiness check: ready or not, the models listed, and why."""

    ready: bool
    models: frozenset[str]
    reason: str


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """What "ready" means for one replica: the key to send and the models it must list."""

    api_key: str | None = field(default=None, repr=False)
    expected_models: frozenset[str] = frozenset()

    @classmethod
    def of(cls, api_key: str | None = None, models: Iterable[str] = ()) -> ReadinessCheck:
        return cls(api_key=api_key or None, expected_models=frozenset(models))

    @property
    def headers(self) -> dict[str, str]:
        """Headers for both requests (``/health`` ignores the key; ``/v1/models`` needs it)."""
        return {"authorization": BEARER + self.api_key} if self.api_key else {}

    def verdict(
        self, health_status: int | None, models_status: int | None, models_body: bytes | None
    ) -> Verdict:
        """Judge the two answers (``None``: that request failed or was not sent)."""
        none: frozenset[str] = frozenset()
        if health_status != 200:
            return Verdict(False, none, f"/health answered {health_status or 'nothing'}")
        if models_status == 401:
            return Verdict(False, none, "/v1/models refused the API key (401)")
        if models_status != 200 or models_body is None:
            return Verdict(False, none, f"/v1/models answered {models_status or 'nothing'}")
        listed = model_ids(models_body)
        if listed is None:
            return Verdict(False, none, "/v1/models is not a model list")
        models = frozenset(listed)
        if not models:
            return Verdict(False, models, "/v1/models lists no model yet")
        missing = self.expected_models - models
        if missing:
            return Verdict(False, models, f"/v1/models does not list {', '.join(sorted(missing))}")
        return Verdict(True, models, "serving " + ", ".join(sorted(models)))


def model_ids(body: bytes) -> set[str] | None:
    """The ids in a ``/v1/models`` answer, or ``None`` when it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        return None
    return {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}


def models_probe_script(port: int, model: str, key_env: str = "VLLM_API_KEY") -> str:
    """The rule's model-list half as one line of Python for an ``exec`` probe (Kubernetes'
    readinessProbe; its startup and liveness probes ask ``/health``): exit 0 when
    ``MODELS_PATH``, asked with the key in ``$key_env``, lists ``model``."""
    return (
        "import json, os, urllib.request as u; "
        f"r = u.Request('http://127.0.0.1:{port}{MODELS_PATH}', "
        f"headers={{'Authorization': {BEARER!r} + os.environ[{key_env!r}]}}); "
        "ids = [m['id'] for m in json.load(u.urlopen(r, timeout=4))['data']]; "
        f"raise SystemExit(0 if {model!r} in ids else 1)"
    )


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
