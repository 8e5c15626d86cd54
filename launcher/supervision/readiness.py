"""Is this vLLM replica ready? One answer for the gateway's prober, ``vkit launch``'s systemd
notifications and ``vkit up``.

Ready means: ``GET /health`` answers 200 *and* ``GET /v1/models`` answers 200 and lists a
model -- every one of ``expected_models`` when some are named. ``/health`` alone is not
enough: it goes 200 as soon as the HTTP server binds, before the model is served
(docs/vllm-server.md#health-and-readiness). vLLM's ``--api-key`` guards every path under ``/v1``, so
the model list is asked for with the key (``Authorization: Bearer``); without it a protected replica
answers 401 and is never ready.

The rule itself is pure (:meth:`ReadinessCheck.verdict`) and imports no HTTP client; each
caller brings its own: :class:`launcher.supervision.readiness_probe.VllmProbe` (blocking,
httpx) for ``vkit launch`` and ``vkit up``, the gateway's pooled asyncio client in
:mod:`gateway.health` (so the gateway process never imports httpx).

    >>> check = ReadinessCheck(api_key="s3cret", expected_models=frozenset({"tiny-llama"}))
    >>> check.verdict(200, 200, b'{"data": [{"id": "tiny-llama"}]}').ready
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    cards = model_cards(body)
    return None if cards is None else {card["id"] for card in cards}


def model_cards(body: bytes) -> list[dict[str, Any]] | None:
    """The model cards (with a string ``id``) of a ``/v1/models`` answer, or ``None`` when
    it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        return None
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


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
