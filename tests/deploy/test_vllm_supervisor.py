"""The replicas' supervisor (vkit/render/vllm_supervisor.py, copied into compose bundles): its
decision, and the script itself against a stand-in engine that stops answering, and against
the vLLM stand-in hung mid-step (``/health`` 200, no progress)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import httpx
import pytest

import launcher.supervision.progress as progress
from tests.vllm_standin import Script, standin_in_thread
from vkit.stack.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "vkit" / "render" / "vllm_supervisor.py"


def load_supervisor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vllm_supervisor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sup = load_supervisor()
POLICY = sup.Policy(interval_s=15, timeout_s=10, failures=3, start_period_s=900)


def run(probes: Sequence[tuple[bool, float]]) -> list[bool]:
    """Feed (ok, elapsed) probes through judge; the stop verdict after each."""
    state, verdicts = sup.ProbeState(), []
    for ok, elapsed in probes:
        state, stop = sup.judge(state, ok, elapsed, POLICY)
        verdicts.append(stop)
    return verdicts


# -- the decision --------------------------------------------------------------------------


def test_failures_while_starting_do_not_count() -> None:
    assert run([(False, t) for t in range(0, 900, 15)]) == [False] * 60


def test_after_the_start_period_failures_in_a_row_stop_the_engine() -> None:
    assert run([(False, 900), (False, 915), (False, 930)]) == [False, False, True]


def test_a_success_ends_the_start_period_early() -> None:
    verdicts = run([(False, 10), (True, 20), (False, 30), (False, 40), (False, 50)])
    assert verdicts == [False, False, False, False, True]


def test_a_success_clears_the_failures() -> None:
    probes = [(True, 10), (False, 20), (False, 30), (True, 40), (False, 50), (False, 60)]
    assert run(probes) == [False] * 6
    assert run([*probes, (False, 70)])[-1] is True


def test_the_compose_numbers_reach_the_policy() -> None:
    argv = [
        "--health-url", "http://127.0.0.1:8000/health", "--interval", "15", "--timeout", "10",
        "--failures", "4", "--start-period", "900", "--", "python3", "-m", "x", "--port", "8000",
    ]  # fmt: skip
    options, command = sup.parse_args(argv)
    assert command == ["python3", "-m", "x", "--port", "8000"]
    assert (options.interval, options.timeout, options.failures) == (15, 10, 4)
    assert options.start_period == 900
    with pytest.raises(SystemExit):
        sup.parse_args(["--health-url", "http://x/health"])


# -- the script, against a stand-in engine -------------------------------------------------

STAND_IN = textwrap.dedent(
    """
    import os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port, hang_file, drained_file, answered_file = int(sys.argv[1]), *sys.argv[2:5]
    state = {"hung": False}

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            if os.path.exists(hang_file):  # the engine hangs: no answer, SIGTERM ignored
                state["hung"] = True
                time.sleep(3600)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.wfile.flush()
            with open(answered_file, "a") as answered:  # after the answer has gone out
                answered.write("ok ")

        def log_message(self, *args):
            pass

    def on_term(signum, frame):
        if state["hung"]:
            return
        time.sleep(1.0)  # draining
        open(drained_file, "w").write("drained")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = ThreadingHTTPServer(("127.0.0.1", port), Health)
    server.daemon_threads = True
    server.serve_forever()
    """
)


class Supervised:
    """The supervisor script running the stand-in engine."""

    def __init__(self, tmp_path: Path, *, start_period: float, hung_from_start: bool) -> None:
        self.port = free_port()
        self.hang_file = tmp_path / "hang"
        self.drained_file = tmp_path / "drained"
        self.answered_file = tmp_path / "answered"  # one "ok " per health answer sent
        if hung_from_start:
            self.hang_file.write_text("")
        engine = self.engine = tmp_path / "engine.py"
        engine.write_text(STAND_IN)
        argv = [sys.executable, str(SCRIPT), "--health-url", f"{self.url}/health"]
        argv += ["--interval", "0.2", "--timeout", "0.3", "--failures", "3"]
        argv += ["--start-period", str(start_period), "--kill-grace", "1"]
        argv += ["--", sys.executable, str(engine), str(self.port)]
        argv += [str(self.hang_file), str(self.drained_file), str(self.answered_file)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        """Until the engine has answered the supervisor's probe: the supervisor has seen it
        serve (its start period is over), so failures count from the next probe on."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.answered_file.exists() and self.answered_file.read_text():
                return
            time.sleep(0.05)
        raise AssertionError("the stand-in engine did not answer the supervisor's probe")

    def engine_pids(self) -> list[int]:
        """Stand-in engine processes still running."""
        out = subprocess.run(
            ["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True, check=True
        ).stdout
        return [int(line.split()[0]) for line in out.splitlines() if str(self.engine) in line]

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        for pid in self.engine_pids():
            os.kill(pid, signal.SIGKILL)
        return err


@pytest.mark.integration
def test_a_hung_engine_is_killed_and_the_supervisor_exits_non_zero(tmp_path: Path) -> None:
    supervised = Supervised(tmp_path, start_period=60, hung_from_start=False)
    try:
        supervised.wait_serving()
        assert supervised.proc.poll() is None
        supervised.hang_file.write_text("")
        hung_at = time.monotonic()
        code = supervised.proc.wait(timeout=20)
        took = time.monotonic() - hung_at
    finally:
        err = supervised.close()
    assert code == sup.EXIT_UNHEALTHY, err
    assert "3 probes" in err and "failed in a row" in err
    # three probes of 0.2 + 0.3 s, then SIGTERM ignored for the 1 s grace, then SIGKILL
    assert 1.0 <= took < 10, took
    assert supervised.engine_pids() == []


@pytest.mark.integration
def test_failures_before_the_start_period_ends_do_not_stop_the_engine(tmp_path: Path) -> None:
    supervised = Supervised(tmp_path, start_period=3, hung_from_start=True)
    try:
        code = supervised.proc.wait(timeout=20)
        took = time.monotonic() - supervised.started
    finally:
        err = supervised.close()
    assert code == sup.EXIT_UNHEALTHY, err
    assert 3 <= took < 12, took


@pytest.mark.integration
def test_a_stop_signal_lets_the_engine_drain_and_passes_its_exit_code(tmp_path: Path) -> None:
    supervised = Supervised(tmp_path, start_period=60, hung_from_start=False)
    try:
        supervised.wait_serving()
        supervised.proc.send_signal(signal.SIGTERM)
        code = supervised.proc.wait(timeout=20)
    finally:
        err = supervised.close()
    assert code == 0, err
    assert supervised.drained_file.read_text() == "drained"
    assert "failed in a row" not in err


@pytest.mark.integration
def test_an_engine_that_exits_ends_the_supervisor_with_its_code(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPT), "--health-url", "http://127.0.0.1:9/health", "--"]
    argv += [sys.executable, "-c", "import sys; sys.exit(3)"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3, result.stderr


# -- a hung engine: /health 200, requests running, no progress (the vLLM stand-in) ----------

ENGINE = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(600)
    """
)
STALL_AFTER_S = 1.5


def test_the_stall_flags_reach_the_supervisor_and_default_on() -> None:
    argv = ["--health-url", "http://127.0.0.1:8000/health", "--", "python3", "-m", "x"]
    options, _ = sup.parse_args(argv)
    assert options.stall_after == sup.STALL_AFTER_S == progress.STALL_AFTER_S  # one default
    assert options.metrics_url is None
    assert sup.metrics_url_beside(argv[1]) == "http://127.0.0.1:8000/metrics"
    options, _ = sup.parse_args(["--metrics-url", "http://x:1/m", "--stall-after", "0", *argv])
    assert (options.metrics_url, options.stall_after) == ("http://x:1/m", 0)


def stream_slowly(url: str, chunks: int) -> None:
    """A long generation: ``chunks`` tokens, one every ``chunk_delay``."""
    body = {"model": "tiny-llama", "prompt": "x", "stream": True, "max_tokens": chunks}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        for _ in response.iter_lines():
            pass


@pytest.mark.integration
def test_a_hung_engine_whose_health_says_200_is_killed(tmp_path: Path) -> None:
    """Idle, then a long slow generation, each longer than the stall window: the engine
    keeps running; hung (``/health`` 200, a request running, counters frozen): it is
    stopped within the window and the supervisor exits non-zero."""
    engine = tmp_path / "engine.py"
    engine.write_text(ENGINE)
    script = Script(running=0, chunks=70, chunk_delay=0.05)
    with standin_in_thread(script) as replica:
        argv = [sys.executable, str(SCRIPT), "--health-url", f"{replica.url}/health"]
        argv += ["--interval", "0.2", "--timeout", "1", "--failures", "3"]
        argv += ["--start-period", "60", "--kill-grace", "1"]
        argv += ["--stall-after", str(STALL_AFTER_S), "--", sys.executable, str(engine)]
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2 * STALL_AFTER_S)  # idle, counters flat
            assert proc.poll() is None
            replica.script.running = 1
            streamer = threading.Thread(target=stream_slowly, args=(replica.url, 70))
            streamer.start()  # 3.5 s of generation, a token every 50 ms
            streamer.join(timeout=30)
            assert proc.poll() is None
            assert replica.generated == 70
            replica.script.hung = True
            hung_at = time.monotonic()
            code = proc.wait(timeout=30)
            took = time.monotonic() - hung_at
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            assert proc.stderr is not None
            err = proc.stderr.read()
            proc.stderr.close()
    assert code == sup.EXIT_UNHEALTHY, err
    assert "no progress for" in err and "1 request(s) running" in err, err
    assert STALL_AFTER_S <= took < STALL_AFTER_S + 8, took
    ps = subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True, check=True)
    assert str(engine) not in ps.stdout  # the engine's process group is gone


# -- start-up healing: vLLM's memory errors corrected, as `vkit launch` does ------------------

FAKE_ENGINE = REPO / "tests" / "launcher" / "supervision" / "fake_engine.py"
TOO_LONG_LOG = "... Based on the available memory, the estimated maximum model length is 1024."
BUSY_GPU_LOG = (
    "ValueError: Free memory on device cuda:0 (12.0/24.0 GiB) on startup is less than "
    "desired GPU memory utilization (0.92, 22.08 GiB)."
)


def test_the_healed_command_replaces_the_flag_in_either_form() -> None:
    server = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"]
    for given in (["--max-model-len", "6144"], ["--max-model-len=6144"]):
        healed = sup.healed_command([*server, *given, "--port", "8000"], TOO_LONG_LOG)
        assert healed is not None
        assert healed[0] == [*server, "--port", "8000", "--max-model-len", "1024"]
        assert "retrying with --max-model-len 1024" in healed[1]
    healed = sup.healed_command([*server, "--gpu-memory-utilization", "0.92"], BUSY_GPU_LOG)
    assert healed is not None
    assert healed[0][-2:] == ["--gpu-memory-utilization", "0.48"]
    assert sup.healed_command([*server], BUSY_GPU_LOG) is not None  # vLLM's default, 0.92


def test_what_the_rule_does_not_heal_is_left_alone() -> None:
    server = ["vllm", "--max-model-len", "1024"]
    assert sup.healed_command(server, TOO_LONG_LOG) is None  # already at the hint
    assert sup.healed_command(server, "RuntimeError: something else broke") is None
    low = ["vllm", "--gpu-memory-utilization", "0.4"]
    assert sup.healed_command(low, BUSY_GPU_LOG) is None  # already under what is free


def test_heals_are_on_by_default_and_can_be_turned_off() -> None:
    argv = ["--health-url", "http://127.0.0.1:8000/health", "--", "vllm"]
    assert sup.parse_args(argv)[0].max_heals == sup.MAX_HEALS == 2
    assert sup.parse_args(["--max-heals", "0", *argv])[0].max_heals == 0


def supervise_fake(mode: str, *flags: str, max_heals: int = 2) -> subprocess.CompletedProcess[str]:
    """The supervisor script over tests/launcher/supervision/fake_engine.py in ``mode``."""
    argv = [sys.executable, str(SCRIPT), "--health-url", "http://127.0.0.1:9/health"]
    argv += ["--interval", "0.2", "--timeout", "0.2", "--max-heals", str(max_heals), "--"]
    argv += [sys.executable, str(FAKE_ENGINE), mode, "--model", "m", *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.integration
def test_a_context_too_long_for_the_kv_cache_is_started_again_at_vllms_estimate() -> None:
    result = supervise_fake("too-long", "--max-model-len", "4096")
    assert result.returncode == 0, result.stderr
    # the engine's own output passes through, each start's
    assert "estimated maximum model length is 1024" in result.stdout
    starts = [line for line in result.stdout.splitlines() if line.startswith("fake engine argv")]
    assert starts == [
        "fake engine argv: --model m --max-model-len 4096",
        "fake engine argv: --model m --max-model-len 1024",
    ]
    assert "retrying with --max-model-len 1024 (restart 1/2)" in result.stderr


@pytest.mark.integration
def test_a_gpu_another_process_holds_is_started_again_at_what_is_free() -> None:
    result = supervise_fake("busy-gpu", "--gpu-memory-utilization", "0.92")
    assert result.returncode == 0, result.stderr
    assert "fake engine argv: --model m --gpu-memory-utilization 0.48" in result.stdout
    assert "retrying with --gpu-memory-utilization 0.48" in result.stderr


@pytest.mark.integration
def test_a_stop_signal_during_a_heal_reaches_the_next_start(tmp_path: Path) -> None:
    """SIGTERM arriving while the supervisor restarts a healed engine: the stop wins, and no
    engine is left running unsignalled (it would run on until Docker's grace kill)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "(restart 1/" in line:  # the heal is decided; the next start comes right after
            os.kill(os.getpid(), signal.SIGTERM)

    command = [sys.executable, str(FAKE_ENGINE), "too-long-then-serve", "--max-model-len", "4096"]
    policy = sup.Policy(interval_s=0.2, timeout_s=0.2, failures=3, start_period_s=600)
    try:
        with (tmp_path / "engine.log").open("wb") as output:
            code = sup.supervise(
                command, "http://127.0.0.1:9/health", policy, log=log, output=output
            )
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    engine_log = (tmp_path / "engine.log").read_text()
    assert code != 4, f"the healed engine served on, never told to stop: {lines}"
    # either it was never started, or it was told to stop and drained
    if engine_log.count("fake engine argv") == 2:
        assert "drained" in engine_log, engine_log
    assert code in (0, 1), (code, lines)


@pytest.mark.integration
def test_other_failures_and_turned_off_heals_keep_the_engines_exit() -> None:
    crash = supervise_fake("crash")
    assert crash.returncode == 3, crash.stderr
    assert crash.stdout.count("fake engine argv") == 1
    off = supervise_fake("too-long", "--max-model-len", "4096", max_heals=0)
    assert off.returncode == 1, off.stderr
    assert off.stdout.count("fake engine argv") == 1
    assert "giving up after 1 starts" in off.stderr
