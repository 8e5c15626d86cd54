"""Tell systemd when vLLM is ready and alive: ``READY=1``, then ``WATCHDOG=1`` (sd_notify).

vLLM 0.32 sends no sd_notify itself (docs/vllm-server.md#systemd-notification), so ``vkit launch``
does it for a ``Type=notify`` unit with ``WatchdogSec=``: READY=1 once the replica is ready by the
one rule of :mod:`launcher.supervision.readiness` (``/health`` 200 and ``/v1/models`` listing the
served model, asked with the API key), then WATCHDOG=1 every half watchdog interval while
``/health`` keeps answering 200 and the engine makes progress -- so systemd restarts a hung
engine, not only a dead one. ``/health`` stays 200 on an engine stuck mid-step; with each
health check the watcher also samples ``/metrics``, and once requests have been running
with no progress for ``stall_after_s`` (the rule of :mod:`launcher.supervision.progress`)
the pings stop at once, with a ``STATUS=`` line saying why.

Two threads, so that a slow answer never delays a ping: one checks ``/health`` every
eighth of the interval, each check bounded by :func:`probe_timeout_s` (a quarter of it, at
most 5 s); the other pings on a fixed schedule, without touching the network, as long as
the last 200 is younger than one watchdog interval. A busy engine whose ``/health`` is slow
once keeps its pings; one that answers nothing for a whole interval stops getting them, and
systemd restarts it about one more interval later.

    >>> watcher = watch_replica("http://127.0.0.1:8000", ReadinessCheck.of("key", ["m"]),
    ...                         SystemdNotifier("/run/systemd/notify"), watchdog_interval_s=60)
    >>> watcher.start(); ...; watcher.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from launcher.supervision.progress import (
    STALL_AFTER_S,
    MetricsSample,
    Progress,
    judge_progress,
)
from launcher.supervision.readiness import ReadinessCheck
from launcher.supervision.readiness_probe import VllmProbe

MAX_PROBE_TIMEOUT_S = 5.0
READY_POLL_S = 1.0


def probe_timeout_s(watchdog_interval_s: float | None) -> float:
    """How long one health check may take: a quarter of the watchdog interval, at most 5 s
    (well inside the half interval between two pings)."""
    if watchdog_interval_s is None:
        return MAX_PROBE_TIMEOUT_S
    return min(MAX_PROBE_TIMEOUT_S, watchdog_interval_s / 4)


class SystemdNotifier:
    """Datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket)."""

    def __init__(self, address: str) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address

    def send(self, message: str) -> bool:
        """Send one datagram without blocking; ``False`` when it could not be delivered."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a full socket buffer must not stall the pinger
                sock.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True


class Probe(Protocol):
    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...


class HealthWatcher:
    """READY=1 once ``probe.ready()``; then WATCHDOG=1 every ``watchdog_interval_s / 2``
    while ``probe.healthy()`` answered yes within the last ``watchdog_interval_s`` and
    ``sample_progress`` (when given) shows no stall of ``stall_after_s`` (0: never).

    ``probe`` and ``sample_progress`` must bound their own calls (:func:`watch_replica`
    gives them :func:`probe_timeout_s`); ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        probe: Probe,
        notifier: SystemdNotifier,
        watchdog_interval_s: float | None,
        poll_s: float = READY_POLL_S,
        on_message: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sample_progress: Callable[[], MetricsSample | None] | None = None,
        stall_after_s: float = STALL_AFTER_S,
    ) -> None:
        self._probe = probe
        self._sample_progress = sample_progress
        self._stall_after_s = stall_after_s
        self._progress = Progress()
        self.stalled = False
        self._notifier = notifier
        self._watchdog_s = watchdog_interval_s
        self._poll_s = poll_s
        self._on_message = on_message
        self._clock = clock
        self._last_healthy = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vkit-sd-notify", daemon=True)
        self._pinger = threading.Thread(target=self._ping, name="vkit-sd-watchdog", daemon=True)

    def _send(self, message: str) -> None:
        self._notifier.send(message)
        if self._on_message is not None:
            self._on_message(message)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._probe.ready():
            self._stop.wait(self._poll_s)
        if self._stop.is_set():
            return
        self._last_healthy = self._clock()  # ready implies /health answered just now
        self._send("READY=1\nSTATUS=vLLM is serving")
        if self._watchdog_s is None:
            return
        self._pinger.start()
        every = self._watchdog_s / 8
        while not self._stop.is_set():
            began = self._clock()
            if self._probe.healthy():
                if self._judge_progress():
                    self._last_healthy = float("-inf")  # stalled: no more pings at all
                else:
                    self._last_healthy = self._clock()
            self._stop.wait(max(0.0, began + every - self._clock()))

    def _judge_progress(self) -> bool:
        """Sample ``/metrics`` and apply the progress rule; ``True`` while stalled."""
        if self._sample_progress is None or self._stall_after_s <= 0:
            return False
        sample = self._sample_progress()
        now = self._clock()
        self._progress, stalled = judge_progress(self._progress, sample, now, self._stall_after_s)
        if stalled and not self.stalled and sample is not None:
            idle_s = now - self._progress.since
            self._send(
                f"STATUS=vLLM made no progress for {idle_s:.0f} s with {sample.running:g} "
                "request(s) running: watchdog pings stopped"
            )
        self.stalled = stalled
        return stalled

    def _ping(self) -> None:
        """On a fixed schedule (no drift, no network): WATCHDOG=1 while /health is fresh."""
        assert self._watchdog_s is not None
        interval = self._watchdog_s / 2
        due = self._clock()
        while not self._stop.wait(max(0.0, due - self._clock())):
            now = self._clock()
            if now - self._last_healthy < self._watchdog_s:
                self._send("WATCHDOG=1")
            due += interval
            if due <= now:  # this thread was held up: on time again from now
                due = now + interval

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pinger.is_alive():
            self._pinger.join(timeout=10)
        self._notifier.send("STOPPING=1")


def watch_replica(
    base_url: str,
    check: ReadinessCheck,
    notifier: SystemdNotifier,
    *,
    watchdog_interval_s: float | None,
    stall_after_s: float = STALL_AFTER_S,
) -> HealthWatcher:
    """The watcher ``vkit launch`` runs under systemd for the replica at ``base_url``."""
    probe = VllmProbe(base_url, check, timeout_s=probe_timeout_s(watchdog_interval_s))
    return HealthWatcher(
        probe=probe,
        notifier=notifier,
        watchdog_interval_s=watchdog_interval_s,
        sample_progress=probe.progress_sample,
        stall_after_s=stall_after_s,
    )
