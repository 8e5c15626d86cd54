"""Tell systemd when vLLM is ready and alive: ``READY=1``, then ``WATCHDOG=1`` (sd_notify).

vLLM 0.32 sends no sd_notify itself (REFERENCE section 1), so ``vkit launch`` does it for a
``Type=notify`` unit with ``WatchdogSec=``: READY=1 once the replica is ready by the one
rule of :mod:`launcher.supervision.readiness` (``/health`` 200 and ``/v1/models`` listing the
served model, asked with the API key), WATCHDOG=1 every half watchdog interval while
``/health`` stays 200 -- so systemd restarts a hung engine, not only a dead one.

    >>> watcher = HealthWatcher(probe=VllmProbe("http://127.0.0.1:8000"),
    ...                         notifier=SystemdNotifier("/run/systemd/notify"),
    ...                         watchdog_interval_s=30.0)
    >>> watcher.start(); ...; watcher.stop()
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Protocol


class SystemdNotifier:
    """Datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket)."""

    def __init__(self, address: str) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address

    def send(self, message: str) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True


class Probe(Protocol):
    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...


class HealthWatcher:
    """A thread: READY=1 once ``probe.ready()``, then WATCHDOG=1 while ``probe.healthy()``."""

    def __init__(
        self,
        *,
        probe: Probe,
        notifier: SystemdNotifier,
        watchdog_interval_s: float | None,
        poll_s: float = 1.0,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self._probe = probe
        self._notifier = notifier
        self._watchdog_s = watchdog_interval_s
        self._poll_s = poll_s
        self._on_message = on_message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vkit-sd-notify", daemon=True)

    def _send(self, message: str) -> None:
        self._notifier.send(message)
        if self._on_message is not None:
            self._on_message(message)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._probe.ready():
            self._stop.wait(self._poll_s)
        if self._stop.is_set():
            return
        self._send("READY=1\nSTATUS=vLLM is serving")
        if self._watchdog_s is None:
            return
        while not self._stop.wait(self._watchdog_s / 2):
            if self._probe.healthy():
                self._send("WATCHDOG=1")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._notifier.send("STOPPING=1")
