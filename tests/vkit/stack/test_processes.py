"""ProcessGroup against real (tiny Python) child processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from vkit.exit_codes import CliError
from vkit.stack.ports import pick_free_ports, port_in_use
from vkit.stack.processes import ProcessFailed, ProcessGroup, tail_lines
from vkit.stack.specs import ProcessSpec, TcpCheck

LISTEN = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True: time.sleep(1)
"""
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
)
print(child.pid, flush=True)
time.sleep(600)
"""


def spec(tmp_path: Path, name: str, code: str, *args: str, **kw: object) -> ProcessSpec:
    argv = (sys.executable, "-c", code, *args)
    return ProcessSpec(name=name, argv=argv, log_path=tmp_path / f"{name}.log", **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
def test_waits_until_ready_then_stops_and_frees_the_port(tmp_path: Path) -> None:
    port = pick_free_ports(1)[0]
    server = spec(tmp_path, "srv", LISTEN, str(port), "0.5", ready=(TcpCheck("127.0.0.1", port),))
    progress: list[tuple[list[str], float]] = []
    with ProcessGroup(poll_interval_s=0.05) as group:
        running = group.start(server)
        group.wait_ready(
            [running],
            10,
            on_progress=lambda p, t: progress.append((list(p), t)),
            progress_every_s=0.1,
        )
        assert port_in_use(port)
        assert progress and progress[0][0] == ["srv"]
    assert running.exit_code() is not None
    assert not port_in_use(port)


@pytest.mark.integration
def test_a_child_that_exits_fails_with_its_code_and_last_log_lines(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(30): print('line', i)\nsys.exit(3)"
    port = pick_free_ports(1)[0]
    crash = spec(tmp_path, "replica-0", code, ready=(TcpCheck("127.0.0.1", port),))
    with ProcessGroup(poll_interval_s=0.05) as group:
        running = group.start(crash)
        with pytest.raises(ProcessFailed) as failure:
            group.wait_ready([running], 10)
    message = str(failure.value)
    assert message.startswith("replica-0 exited with code 3")
    assert "line 29" in message and "line 10" in message and "line 9\n" not in message


@pytest.mark.integration
def test_readiness_wait_is_bounded(tmp_path: Path) -> None:
    port = pick_free_ports(1)[0]
    slow = spec(tmp_path, "slow", LISTEN, str(port), "60", ready=(TcpCheck("127.0.0.1", port),))
    with ProcessGroup(poll_interval_s=0.05) as group:
        running = group.start(slow)
        started = time.monotonic()
        with pytest.raises(ProcessFailed, match="slow was not ready after 1 s"):
            group.wait_ready([running], 1.0)
        assert time.monotonic() - started < 5


@pytest.mark.integration
def test_stop_all_kills_a_stubborn_child_and_its_grandchild_in_a_new_session(
    tmp_path: Path,
) -> None:
    group = ProcessGroup()
    running = group.start(spec(tmp_path, "stubborn", STUBBORN))
    deadline = time.monotonic() + 10
    while not tail_lines(running.spec.log_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(tail_lines(running.spec.log_path)[0])
    assert alive(grandchild)
    group.stop_all(grace_s=0.5)
    assert running.exit_code() is not None
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)
    assert group.running == []


def autogroup(pid: int | str, proc: Path = Path("/proc")) -> str | None:
    """The kernel's scheduling group by session (``/autogroup-N``), where it has them.

    None where the kernel has none, and where the process is in the kernel's default group
    (a session that no ``setsid`` began while autogroup was on, as under ``noautogroup`` or
    in some CI runners): the file is then empty, and the tests' own CI ran that way."""
    try:
        fields = (proc / str(pid) / "autogroup").read_text().split()
    except OSError:
        return None
    return fields[0] if fields else None


def test_autogroup_reads_a_group_an_empty_file_and_no_file(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "autogroup").write_text("/autogroup-2470 nice 0\n")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "autogroup").write_text("")
    assert autogroup(7, tmp_path) == "/autogroup-2470"
    assert autogroup(1, tmp_path) is None
    assert autogroup(2, tmp_path) is None


@pytest.mark.integration
def test_each_child_has_its_own_process_group_in_vkits_session(tmp_path: Path) -> None:
    """Its own group, so that the whole group is killed (grandchildren too); vkit's session,
    so that the kernel's autogroup schedules it with the gateway, not as a share apart."""
    with ProcessGroup() as group:
        running = group.start(spec(tmp_path, "sleeper", "import time; time.sleep(600)"))
        pid = running.popen.pid
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getsid(pid) == os.getsid(0)
        assert autogroup(pid) == autogroup("self")
        group.stop_all(grace_s=0.5)


@pytest.mark.integration
def test_a_missing_program_is_one_clear_error(tmp_path: Path) -> None:
    missing = ProcessSpec("nginx", ("/nonexistent/nginx",), tmp_path / "n.log")
    with ProcessGroup() as group, pytest.raises(CliError, match="cannot start /nonexistent/nginx"):
        group.start(missing)
