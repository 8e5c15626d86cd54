"""Finding the replicas: the settings' list, a file, or DNS records (the discovery seam).

A :class:`ReplicaSource` answers "which base URLs now"; :class:`Discovery` asks it every
``discovery.interval`` seconds and hands a changed answer to
:meth:`gateway.upstreams.UpstreamPool.replace` (kept replicas keep their state, new ones
are probed before the aware router sends them anything). Sources:

- :class:`FileSource`: one base URL per line, ``#`` comments (a file a deploy tool writes);
- :class:`DnsSource`: every address the name resolves to (A and AAAA records: a Kubernetes
  headless Service lists its ready pods so), as ``scheme://address:port``;
- :class:`DnsNamesSource`: several such names (``discovery.dns_names``: one headless Service
  per replica group, each with its port), their replicas together. A name whose look-up
  fails keeps its last answer while the others are taken; one never answered yet fails
  the whole look-up (the list stays as it was).

A look-up that fails keeps the list as it was (logged); an empty answer is taken (every
replica gone: scale to zero), and requests are then held or refused (:mod:`.holding`).
After each look-up the metrics of replicas no longer served are removed
(:meth:`gateway.metrics.GatewayMetrics.keep_upstreams`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from gateway.metrics import GatewayMetrics
from gateway.settings import DiscoverySettings
from gateway.upstreams import UpstreamPool

log = logging.getLogger("vkit.gateway.discovery")


class ReplicaSource(Protocol):
    async def replicas(self) -> list[str]:
        """The base URLs to serve now; raises OSError when it cannot tell."""


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def replicas(self) -> list[str]:
        text = await asyncio.to_thread(self.path.read_text)
        return parse_url_list(text)


def parse_url_list(text: str) -> list[str]:
    """Base URLs, one per line; blank lines and ``#`` comments skipped, order kept."""
    urls = []
    for line in text.splitlines():
        url = line.split("#", 1)[0].strip()
        if url and url not in urls:
            urls.append(url.rstrip("/"))
    return urls


class DnsSource:
    """Addresses of ``name`` (``resolve`` is injectable: ``async (name, port) -> [address]``)."""

    def __init__(
        self,
        name: str,
        port: int,
        scheme: str = "http",
        resolve: Callable[[str, int], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.scheme = scheme
        self._resolve = resolve or _getaddrinfo

    async def replicas(self) -> list[str]:
        addresses = await self._resolve(self.name, self.port)
        return [host_url(self.scheme, address, self.port) for address in sorted(set(addresses))]


async def _getaddrinfo(name: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return []  # the name has no records (now): no replicas
        raise
    return [str(info[4][0]) for info in infos]


def host_url(scheme: str, address: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False
    return f"{scheme}://[{address}]:{port}" if is_v6 else f"{scheme}://{address}:{port}"


class DnsNamesSource:
    """The replicas of several DNS names, in the order of the names."""

    def __init__(self, sources: list[DnsSource]) -> None:
        self.sources = sources
        self._last: dict[int, list[str]] = {}  # source index -> its last answer

    async def replicas(self) -> list[str]:
        answers = await asyncio.gather(
            *(source.replicas() for source in self.sources), return_exceptions=True
        )
        urls: list[str] = []
        for index, (source, answer) in enumerate(zip(self.sources, answers, strict=True)):
            if isinstance(answer, BaseException):
                if not isinstance(answer, OSError | UnicodeError) or index not in self._last:
                    raise answer
                log.warning(
                    "look-up of %s failed, keeping its %d replicas: %s",
                    source.name,
                    len(self._last[index]),
                    answer,
                )
                answer = self._last[index]
            self._last[index] = answer
            urls.extend(url for url in answer if url not in urls)
        return urls


def source_of(settings: DiscoverySettings) -> ReplicaSource | None:
    """The source the settings name, or ``None``: the ``upstreams`` list alone."""
    if settings.file is not None:
        return FileSource(settings.file)
    targets = settings.dns_targets
    sources = [DnsSource(name, port, settings.scheme) for name, port in targets]
    if len(sources) > 1:
        return DnsNamesSource(sources)
    return sources[0] if sources else None


class Discovery:
    def __init__(
        self,
        source: ReplicaSource,
        pool: UpstreamPool,
        interval: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.source = source
        self.pool = pool
        self.interval = interval
        self.metrics = metrics

    async def run_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)

    async def refresh(self) -> bool:
        """Ask the source once; whether the pool changed. Never raises (but cancellation)."""
        try:
            urls = await self.source.replicas()
        except (OSError, UnicodeError) as exc:
            log.warning(
                "replica discovery failed, keeping %d replicas: %s", len(self.pool.upstreams), exc
            )
            return False
        changed = self.pool.replace(urls)
        if changed:
            log.info("replicas now: %s", ", ".join(urls) or "none")
        if self.metrics is not None:  # every time: a late probe may have written one again
            self.metrics.keep_upstreams({u.label for u in self.pool.upstreams})
        return changed
