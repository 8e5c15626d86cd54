"""The set of upstreams, their readiness, and which one a request tries next.

Readiness is written by the background prober (:mod:`gateway.health`), never per request.
:meth:`UpstreamPool.candidates` yields upstreams round-robin, ready ones first; before
the first probe has finished every upstream counts as a candidate, so a fresh gateway
does not refuse traffic it could serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(slots=True)
class Upstream:
    url: str
    label: str  # host:port, a bounded metric label
    ready: bool = False
    probed: bool = False
    models: frozenset[str] = field(default_factory=frozenset)


class UpstreamPool:
    def __init__(self, urls: list[str]) -> None:
        self.upstreams = [Upstream(url=u.rstrip("/"), label=_label(u)) for u in urls]
        self._next = 0

    def candidates(self, attempts: int) -> list[Upstream]:
        """Up to ``attempts`` upstreams to try in order, starting round-robin."""
        count = len(self.upstreams)
        start = self._next
        self._next = (start + 1) % count
        rotated = [self.upstreams[(start + i) % count] for i in range(count)]
        usable = [u for u in rotated if u.ready or not u.probed]
        ordered = usable + [u for u in rotated if u not in usable]
        return [ordered[i % count] for i in range(attempts)]

    @property
    def any_ready(self) -> bool:
        return any(u.ready for u in self.upstreams)

    def known_models(self) -> frozenset[str]:
        models: frozenset[str] = frozenset()
        for upstream in self.upstreams:
            models |= upstream.models
        return models


def _label(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url
