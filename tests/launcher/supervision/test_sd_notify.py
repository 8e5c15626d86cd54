"""sd_notify: READY=1 once vLLM serves, WATCHDOG=1 while healthy, over a real AF_UNIX socket."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from launcher.supervision.profiles import LaunchEnvironment
from launcher.supervision.sd_notify import HealthWatcher, SystemdNotifier, probe_timeout_s
from launcher.supervision.vllm_args import VllmOptions
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread
from vkit.commands.launch import served_model, systemd_watcher, vllm_api_key


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
    watchdog_s = 0.2
    probe = ScriptedProbe(not_ready_polls=3)
    watcher = HealthWatcher(
        probe=probe, notifier=SystemdNotifier(path), watchdog_interval_s=watchdog_s, poll_s=0.01
    )
    watcher.start()
    try:
        assert sock.recv(512).startswith(b"READY=1")
        assert probe.not_ready_polls < 0  # not before the probe said ready
        assert sock.recv(512) == b"WATCHDOG=1"
        hung_at = time.monotonic()
        probe.alive = False  # a hung engine: no more pings, so systemd's watchdog fires
        assert probe.seen_dead.wait(timeout=5)  # two health checks failed since
        sock.settimeout(3 * watchdog_s)
        last_ping = hung_at
        try:
            while True:
                assert sock.recv(512) == b"WATCHDOG=1"
                last_ping = time.monotonic()
        except TimeoutError:
            pass  # silence for three watchdog intervals: systemd would have fired
        # Pings last at most one watchdog interval past the last healthy answer.
        assert last_ping - hung_at < 1.5 * watchdog_s
    finally:
        watcher.stop()
    sock.settimeout(5)
    assert sock.recv(512) == b"STOPPING=1"


def test_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    assert SystemdNotifier(str(tmp_path / "missing")).send("READY=1") is False


API_KEY = "k-test"
SLOW_AFTER = 3  # the third /health answer is the slow one (a busy API server)


@pytest.fixture
def slow_once_vllm() -> Iterator[ScriptedUpstream]:
    """vLLM's two readiness routes; ``/v1/models`` wants the key."""
    with standin_in_thread(Script(api_key=API_KEY)) as upstream:
        yield upstream


def launch_watcher(
    notify_path: str, replica: ScriptedUpstream, watchdog_s: float, **environment: Any
) -> HealthWatcher:
    """``vkit launch``'s watcher for ``replica``, as wired under systemd (the key sent)."""
    launch_environment = LaunchEnvironment(
        notify_socket=notify_path,
        watchdog_usec=int(watchdog_s * 1e6),
        vllm_api_key=SecretStr(API_KEY),
        **environment,
    )
    port = int(replica.url.rsplit(":", 1)[1])
    options = VllmOptions(model="/m", served_model_name="tiny-llama", port=port)
    watcher = systemd_watcher(launch_environment, options)
    assert watcher is not None
    return watcher


def test_a_slow_health_answer_does_not_delay_a_watchdog_ping(
    notify_socket: tuple[str, socket.socket], slow_once_vllm: ScriptedUpstream
) -> None:
    """``vkit launch``'s watcher, as wired for systemd: one ``/health`` answer slower than
    the watchdog interval (a busy engine) must not hold back the next ping."""
    path, sock = notify_socket
    watchdog_s = 2.0  # pings every 1 s: a loaded CI box delays a thread by ~0.6 s at times
    slow_s = 1.2 * watchdog_s
    slow_once_vllm.script.health_delays = {SLOW_AFTER: slow_s}
    watcher = launch_watcher(path, slow_once_vllm, watchdog_s)
    watcher.start()
    try:
        assert sock.recv(512).startswith(b"READY=1")
        pings: list[float] = []
        deadline = time.monotonic() + 4 * watchdog_s + slow_s
        while time.monotonic() < deadline:
            if sock.recv(512) == b"WATCHDOG=1":
                pings.append(time.monotonic())
    finally:
        watcher.stop()
    assert slow_once_vllm.health_answers > SLOW_AFTER  # the slow answer happened
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 6, pings
    assert max(gaps) < watchdog_s, f"{max(gaps):.2f} s between two pings: systemd kills"


def test_the_watcher_asks_with_the_key_and_name_vllm_will_use() -> None:
    environment = LaunchEnvironment(vllm_api_key=SecretStr("from-env"))
    plain = VllmOptions(model="/models/m", served_model_name="tiny-llama")
    assert vllm_api_key(environment, plain) == "from-env"
    assert served_model(plain) == "tiny-llama"
    flags = plain.model_copy(
        update={"extra_args": ("--api-key=from-flag", "--served-model-name", "alias", "x")}
    )
    assert vllm_api_key(environment, flags) == "from-flag"  # vLLM: the flag wins
    assert served_model(flags) == "alias"
    assert vllm_api_key(LaunchEnvironment(), VllmOptions(model="/m")) is None
    assert served_model(VllmOptions(model="/m")) == "/m"


@pytest.mark.parametrize(("watchdog", "timeout"), [(None, 5.0), (60.0, 5.0), (4.0, 1.0)])
def test_a_health_check_ends_well_inside_a_ping_interval(
    watchdog: float | None, timeout: float
) -> None:
    assert probe_timeout_s(watchdog) == timeout


def test_a_hung_engine_loses_its_watchdog_pings_though_health_says_200(
    notify_socket: tuple[str, socket.socket],
) -> None:
    """``vkit launch``'s watcher, as wired for systemd, against the vLLM stand-in: pings go
    on while idle and while a slow generation moves tokens, each longer than the stall
    window; hung mid-step (``/health`` 200, a request running, counters frozen), they stop
    once the window has passed, with a STATUS line saying why."""
    path, sock = notify_socket
    watchdog_s, stall_after_s = 2.0, 2.0  # pings every 1 s (see the test above)
    with standin_in_thread(Script(api_key=API_KEY, running=0)) as replica:
        watcher = launch_watcher(path, replica, watchdog_s, vkit_stall_after_s=stall_after_s)
        watcher.start()
        try:
            assert sock.recv(512).startswith(b"READY=1")
            sock.settimeout(0.2)
            pings: list[float] = []
            statuses: list[str] = []

            def listen(until: float) -> None:
                while time.monotonic() < until:
                    try:
                        message = sock.recv(512).decode()
                    except TimeoutError:
                        continue
                    if message == "WATCHDOG=1":
                        pings.append(time.monotonic())
                    elif message.startswith("STATUS="):
                        statuses.append(message)

            listen(time.monotonic() + 1.25 * stall_after_s)  # idle, counters flat
            replica.script.running = 1
            generating_until = time.monotonic() + 1.25 * stall_after_s
            while time.monotonic() < generating_until:  # a token every 0.3 s
                replica.script.generation_tokens_total += 1
                last_token = time.monotonic()
                listen(last_token + 0.3)
            busy_pings = list(pings)
            replica.script.hung = True
            hung_at = time.monotonic()
            listen(hung_at + stall_after_s + 3 * watchdog_s)
        finally:
            watcher.stop()
    gaps = [b - a for a, b in itertools.pairwise(busy_pings)]
    assert len(busy_pings) >= 4 and max(gaps) < watchdog_s, busy_pings
    # Pings go on while hung until the stall window (from the last token) has passed, then
    # stop at once: not a watchdog interval later, as after the last 200 of a failing /health.
    after = [t - last_token for t in pings if t > hung_at]
    assert after, "no ping at all once hung: the window was not waited for"
    assert after[-1] < stall_after_s + 0.75 * watchdog_s, after
    assert watcher.stalled
    assert len(statuses) == 1 and "no progress" in statuses[0], statuses
