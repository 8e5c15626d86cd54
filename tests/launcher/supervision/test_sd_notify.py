"""sd_notify: READY=1 once vLLM serves, WATCHDOG=1 while healthy, over a real AF_UNIX socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.supervision.sd_notify import HealthWatcher, SystemdNotifier


class ScriptedProbe:
    """Not ready for the first ``not_ready_polls`` polls; healthy while ``alive``.

    ``dead_polls`` counts the health checks answered while not alive, so a test can wait
    until the watcher has seen the hang instead of sleeping."""

    def __init__(self, not_ready_polls: int) -> None:
        self.not_ready_polls = not_ready_polls
        self.alive = True
        self.dead_polls = 0
        self.seen_dead = threading.Event()

    def ready(self) -> bool:
        self.not_ready_polls -= 1
        return self.not_ready_polls < 0

    def healthy(self) -> bool:
        if not self.alive:
            self.dead_polls += 1
            if self.dead_polls >= 2:
                self.seen_dead.set()
        return self.alive


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def test_ready_then_watchdog_then_silence_when_hung(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    probe = ScriptedProbe(not_ready_polls=3)
    watcher = HealthWatcher(
        probe=probe, notifier=SystemdNotifier(path), watchdog_interval_s=0.1, poll_s=0.01
    )
    watcher.start()
    try:
        assert sock.recv(512).startswith(b"READY=1")
        assert probe.not_ready_polls < 0  # not before the probe said ready
        assert sock.recv(512) == b"WATCHDOG=1"
        probe.alive = False  # a hung engine: no more pings, so systemd's watchdog fires
        assert probe.seen_dead.wait(timeout=5)  # two health checks failed since
        sock.settimeout(0.3)
        drained = []
        try:
            while True:
                drained.append(sock.recv(512))
        except TimeoutError:
            pass
        assert len(drained) <= 1  # at most one ping already in flight
    finally:
        watcher.stop()
    sock.settimeout(5)
    assert sock.recv(512) == b"STOPPING=1"


def test_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    assert SystemdNotifier(str(tmp_path / "missing")).send("READY=1") is False
