"""``vkit capacity --from-prometheus``: a real Prometheus serving a backfilled TSDB.

The test writes an hour of a two-replica, two-GPU deployment as OpenMetrics (vLLM's series and
DCGM's utilization), turns it into TSDB blocks with ``promtool tsdb create-blocks-from
openmetrics``, starts ``prometheus`` on them and reads the window back over the HTTP API.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from launcher.errors import MetricsError
from launcher.sizing.capacity.measured import ADD_GPU_ABOVE, MeasuredWindow, assess
from launcher.sizing.capacity.prometheus_window import parse_window, read_window
from launcher.sizing.capacity.usage import UsageProfile, peak_concurrency
from vkit.cli import main

pytestmark = pytest.mark.integration

STEP_S = 15
STEPS = 240  # one hour
TOK_S_PER_USER = 30.0
TOKENS_PER_REQUEST = 200


@dataclass(frozen=True)
class Deployment:
    """What the generated series say, to check the planner's reading against."""

    end: float
    peak_running: int  # fleet-wide
    peak_util: float
    final_waiting: int


def running_per_replica(step: int) -> int:
    """2 -> 12 running requests (peak at 3/4 of the hour), then back to 8."""
    peak_step = STEPS * 3 // 4
    if step <= peak_step:
        return 2 + round(10 * step / peak_step)
    return 8


def waiting_per_replica(step: int) -> int:
    """No queue, then one growing over the last ten minutes (40 steps)."""
    return max(0, (step - (STEPS - 40)) // 8)


def util(running: int) -> float:
    return 10.0 + 6.0 * running  # 12 running -> 82%


def write_openmetrics(path: Path, end: float) -> Deployment:
    start = end - (STEPS - 1) * STEP_S
    lines: dict[str, list[str]] = {
        "# TYPE vllm:num_requests_running gauge": [],
        "# TYPE vllm:num_requests_waiting gauge": [],
        "# TYPE vllm:generation_tokens counter": [],
        "# TYPE vllm:request_success counter": [],
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge": [],
    }
    keys = list(lines)
    tokens = [0.0, 0.0]
    done = [0.0, 0.0]
    for step in range(STEPS):
        ts = start + step * STEP_S
        for replica in (0, 1):
            labels = f'model_name="llama-3.1-8b",engine="{replica}"'
            running = running_per_replica(step)
            tokens[replica] += running * TOK_S_PER_USER * STEP_S
            done[replica] += running * TOK_S_PER_USER / TOKENS_PER_REQUEST * STEP_S
            lines[keys[0]].append(f"vllm:num_requests_running{{{labels}}} {running} {ts}")
            waiting = waiting_per_replica(step)
            lines[keys[1]].append(f"vllm:num_requests_waiting{{{labels}}} {waiting} {ts}")
            lines[keys[2]].append(
                f"vllm:generation_tokens_total{{{labels}}} {tokens[replica]} {ts}"
            )
            lines[keys[3]].append(f"vllm:request_success_total{{{labels}}} {done[replica]} {ts}")
            gpu = f'gpu="{replica}",UUID="GPU-{replica}"'
            lines[keys[4]].append(f"DCGM_FI_DEV_GPU_UTIL{{{gpu}}} {util(running)} {ts}")
    text = "".join(f"{head}\n" + "\n".join(body) + "\n" for head, body in lines.items())
    path.write_text(text + "# EOF\n")
    peak = max(running_per_replica(s) for s in range(STEPS))
    return Deployment(end, 2 * peak, util(peak), 2 * waiting_per_replica(STEPS - 1))


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (Debian package: prometheus)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Deployment]]:
    root = tmp_path_factory.mktemp("prom")
    deployment = write_openmetrics(root / "series.om", end=float(int(time.time()) - 30))
    data = root / "data"
    made = subprocess.run(
        [binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "series.om", str(data)],
        capture_output=True, text=True, timeout=120, cwd=root, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (root / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    log = (root / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail((root / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url, deployment
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_window_reads_back_what_the_deployment_did(prometheus) -> None:
    url, deployment = prometheus
    with httpx.Client(base_url=url, timeout=10) as client:
        window = read_window(client, window_s=3600, end=deployment.end, step_s=STEP_S)
    assert window.gpus == 2
    assert max(window.running) == deployment.peak_running
    assert max(window.gpu_util) == pytest.approx(deployment.peak_util)
    assert window.waiting[-1] == deployment.final_waiting and window.waiting[0] == 0
    measured = assess(window, users=100_000)
    assert measured.users_per_gpu_at_peak == deployment.peak_running / 2
    # rate() over 1m trails a ramp a little: per-user speed within 10% of what was generated
    assert measured.per_user_tok_s_at_peak == pytest.approx(TOK_S_PER_USER, rel=0.1)
    verdicts = " ".join(measured.verdicts)
    assert "add a GPU" in verdicts and "not enough throughput" in verdicts
    per_gpu = measured.users_per_gpu_at_peak * ADD_GPU_ABOVE / deployment.peak_util
    target = peak_concurrency(UsageProfile(daily_users=100_000))
    assert measured.forecast_gpus == math.ceil(target / per_gpu)


def test_the_command_reports_and_forecasts(prometheus, capsys: pytest.CaptureFixture[str]) -> None:
    url, deployment = prometheus
    args = ["capacity", "--users", "50000", "--from-prometheus", url, "--window", "1h"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{deployment.peak_running} running requests = 12.0 concurrent users per GPU" in text
    assert "verdict: GPU utilization 82% at peak is above 80%: add a GPU" in text
    assert "forecast: 50,000 daily users" in text
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"] == 2 and data["forecast_users"] == 50_000 and data["forecast_gpus"] >= 1


def test_a_prometheus_without_the_series_is_a_clear_error(prometheus) -> None:
    url, deployment = prometheus
    with httpx.Client(base_url=url, timeout=10) as client, pytest.raises(MetricsError, match="no"):
        read_window(client, window_s=600, end=deployment.end - 7 * 86_400)


def test_quiet_and_idle_deployments_get_the_other_verdicts() -> None:
    idle = MeasuredWindow(
        output_tok_s=[30.0] * 4, running=[1.0] * 4, waiting=[0.0] * 4,
        requests_s=[0.1] * 4, gpu_util=[8.0] * 4, gpus=4,
    )  # fmt: skip
    assert "overpaying" in assess(idle).verdicts[0]
    fine = idle.model_copy(update={"gpu_util": [50.0] * 4})
    assert "sized right" in assess(fine).verdicts[0]


@pytest.mark.parametrize("text", ["0h", "1y", "", "-5m", "h"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--window"):
        parse_window(text)


def test_bad_prometheus_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", "--users", "10", "--from-prometheus", "localhost:9090"]) == 2
    assert (
        main(["capacity", "--users", "10", "--from-prometheus", "http://x", "--window", "0m"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "--from-prometheus" in err and "--window" in err
