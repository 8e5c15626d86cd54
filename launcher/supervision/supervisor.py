"""Run vLLM, forward SIGTERM/SIGINT to it, relaunch it after a healable start-up error.

    >>> supervisor = EngineSupervisor(argv_for=build_vllm_argv, max_restarts=2)
    >>> exit_code = supervisor.run(VllmOptions(model="/models/qwen3-8b", max_model_len=40960))

The engine's output is copied line by line to ``output`` (default: this process's stdout)
and its last lines are kept; when the engine exits non-zero with one of the memory errors
of docs/memory.md#refusal-messages, :func:`launcher.supervision.healing.diagnose` corrects the
options and the engine starts again (at most ``max_restarts`` times), with the reason on
``messages``. After a forwarded signal nothing is relaunched. The exit code is the engine's
(128 + N when a signal N ended it). The vLLM process runs in its own process group, so
that a terminal's Ctrl-C reaches it once (through us), and receives SIGTERM if we die.
"""

from __future__ import annotations

import collections
import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import IO, TextIO

from launcher.supervision.healing import diagnose
from launcher.supervision.vllm_args import VllmOptions

TAIL_LINES = 400
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the engine receives SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def exit_code_of(returncode: int) -> int:
    """Popen's -N for "killed by signal N" becomes the shell's 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class EngineSupervisor:
    """Starts the engine command built by ``argv_for`` and watches it (one at a time)."""

    def __init__(
        self,
        argv_for: Callable[[VllmOptions], list[str]],
        *,
        env: Mapping[str, str] | None = None,
        max_restarts: int = 2,
        output: IO[bytes] | None = None,
        messages: TextIO | None = None,
        forward_signals: bool = True,
    ) -> None:
        self._argv_for = argv_for
        self._env = dict(env) if env is not None else None
        self._max_restarts = max_restarts
        self._output = output if output is not None else sys.stdout.buffer
        self._messages = messages if messages is not None else sys.stderr
        self._forward_signals = forward_signals
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._stop_signal: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.attempts: list[VllmOptions] = []

    def _say(self, text: str) -> None:
        print(f"vkit launch: {text}", file=self._messages, flush=True)

    def run(self, options: VllmOptions) -> int:
        """Run until the engine exits for good; return its exit code."""
        with self._signals_forwarded():
            code = 0
            for attempt in range(self._max_restarts + 1):
                if self._stopping:  # told to stop while a heal was being decided
                    return code
                code = self._run_once(options)
                if code == 0 or self._stopping:
                    return code
                healing = diagnose(options, "\n".join(self.tail))
                if healing is None:
                    return code
                if attempt == self._max_restarts:
                    self._say(f"giving up after {attempt + 1} attempts: {healing.reason}")
                    return code
                self._say(f"{healing.reason} (restart {attempt + 1}/{self._max_restarts})")
                options = healing.options
        return code  # pragma: no cover (the loop returns)

    def _run_once(self, options: VllmOptions) -> int:
        self.attempts.append(options)
        self.tail.clear()
        argv = self._argv_for(options)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            process_group=0,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._proc = proc
        if self._stop_signal is not None:  # it came between run's check and now
            proc.send_signal(self._stop_signal)
        pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        pump.start()
        try:
            returncode = proc.wait()
        finally:
            pump.join(timeout=5)
            self._proc = None
        return exit_code_of(returncode)

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
            try:
                self._output.write(raw)
                self._output.flush()
            except (OSError, ValueError):
                pass  # our own stdout went away: keep draining the pipe
        proc.stdout.close()

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        self._stop_signal = signum
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    @contextmanager
    def _signals_forwarded(self) -> Iterator[None]:
        if not self._forward_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
