"""The relaunch loop and signal forwarding, against a fake engine script (no real vLLM)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.supervision.supervisor import EngineSupervisor, exit_code_of
from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


def _supervisor(
    mode: str, max_restarts: int = 2
) -> tuple[EngineSupervisor, io.BytesIO, io.StringIO]:
    output, messages = io.BytesIO(), io.StringIO()
    supervisor = EngineSupervisor(
        lambda options: build_vllm_argv(options, engine=[sys.executable, str(FAKE_ENGINE), mode]),
        max_restarts=max_restarts,
        output=output,
        messages=messages,
        forward_signals=False,
    )
    return supervisor, output, messages


@pytest.mark.integration
def test_relaunches_with_the_estimated_max_model_len() -> None:
    supervisor, output, messages = _supervisor("too-long")
    code = supervisor.run(VllmOptions(model="m", max_model_len=4096))
    assert code == 0
    assert [o.max_model_len for o in supervisor.attempts] == [4096, 1024]
    assert "--max-model-len 1024" in messages.getvalue()
    assert b"estimated maximum model length is 1024" in output.getvalue()


@pytest.mark.integration
def test_relaunches_with_lower_gpu_memory_utilization() -> None:
    supervisor, _, messages = _supervisor("busy-gpu")
    code = supervisor.run(VllmOptions(model="m", gpu_memory_utilization=0.92))
    assert code == 0
    assert [o.gpu_memory_utilization for o in supervisor.attempts] == [0.92, 0.48]
    assert "12.0/24.0 GiB is free" in messages.getvalue()


@pytest.mark.integration
def test_retries_are_bounded() -> None:
    supervisor, _, messages = _supervisor("too-long", max_restarts=0)
    assert supervisor.run(VllmOptions(model="m", max_model_len=4096)) == 1
    assert len(supervisor.attempts) == 1
    assert "giving up" in messages.getvalue()


@pytest.mark.integration
def test_other_failures_are_not_retried_and_keep_the_exit_code() -> None:
    supervisor, output, _ = _supervisor("crash")
    assert supervisor.run(VllmOptions(model="m")) == 3
    assert len(supervisor.attempts) == 1
    assert "something else broke" in supervisor.tail[-1]
    assert b"something else broke" in output.getvalue()


def test_exit_code_of_signals() -> None:
    assert exit_code_of(-signal.SIGTERM) == 143
    assert exit_code_of(2) == 2


@pytest.mark.integration
def test_sigterm_is_forwarded_to_the_engine() -> None:
    """A real supervisor process in front of the fake engine: SIGTERM drains it."""
    script = (
        "import sys\n"
        "from launcher.supervision.supervisor import EngineSupervisor\n"
        "from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv\n"
        f"engine = [sys.executable, {str(FAKE_ENGINE)!r}, 'serve']\n"
        "sup = EngineSupervisor(lambda o: build_vllm_argv(o, engine=engine))\n"
        "sys.exit(sup.run(VllmOptions(model='m')))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        seen = ""
        while "ready" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        assert "ready" in seen
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert "drained" in out
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _SignalAtRestart(io.StringIO):
    """Messages that send us SIGTERM as the restart line is written: a stop arriving while a
    healed start is being made."""

    def write(self, text: str) -> int:
        written = super().write(text)
        if "(restart 1/" in text:
            os.kill(os.getpid(), signal.SIGTERM)
        return written


@pytest.mark.integration
def test_a_stop_during_a_heal_reaches_the_next_start() -> None:
    """Without it the healed engine starts unsignalled and serves on until systemd's kill."""
    output, messages = io.BytesIO(), _SignalAtRestart()
    supervisor = EngineSupervisor(
        lambda options: build_vllm_argv(
            options, engine=[sys.executable, str(FAKE_ENGINE), "too-long-then-serve"]
        ),
        output=output,
        messages=messages,
    )
    code = supervisor.run(VllmOptions(model="m", max_model_len=4096))
    assert code != 4, "the healed engine served on, never told to stop"
    if len(supervisor.attempts) == 2:  # started after all: then it was told to stop
        assert b"drained" in output.getvalue()
    assert code in (0, 1)
