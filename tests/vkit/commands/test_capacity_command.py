"""``vkit capacity`` end to end: output formats, the chart, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vkit.cli import main


def test_table_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", "--users", "10000"]) == 0
    out = capsys.readouterr().out
    assert "recommendation: 1x rtx4090" in out


def test_json_output_parses(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["capacity", "--users", "100000", "--gpus", "rtx4090,h100", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [o["label"] for o in plan["options"]] == ["rtx4090", "h100-sxm"]
    assert plan["options"][0]["gpus"] == 2  # TP2: the search's best for 100,000 DAU
    assert plan["speed_band"]["under"] < 0 < plan["speed_band"]["over"]
    assert plan["usage"]["daily_users"] == 100_000


def test_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    chart = tmp_path / "cost.png"
    assert main(["capacity", "--users", "1000", "--csv", "--plot", str(chart)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("option,gpu,provider")
    assert captured.out.splitlines()[-1].startswith("serverless,")
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert str(chart) in captured.err


def test_flags_reach_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "capacity",
        "--users",
        "2000",
        "--requests-per-user",
        "6",
        "--peak-share",
        "1",
        "--peak-hours",
        "4",
        "--tok-s",
        "20",
        "--model",
        "13b",
        "--quant",
        "awq",
        "--redundancy",
        "1",
        "--gpus",
        "l40s=1.0",
        "--json",
    ]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["usage"]["user_tok_s"] == 20 and plan["model"] == "llama-2-13b"
    # 2,000 x 6 requests in 4 h, 10 s each: 12,000 / 14,400 s x 10 s
    assert plan["peak_concurrency"] == pytest.approx(12_000 / 14_400 * 10)
    assert plan["options"][0]["usd_per_hour"] == 1.0 and plan["spares"] == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--users", "-5"], "--users"),
        (["--users", "0"], "--users"),
        (["--users", "100", "--peak-share", "1.5"], "--peak-share"),
        (["--users", "100", "--peak-share", "-0.1"], "--peak-share"),
        (["--users", "100", "--gpus", "rtx9090"], "unknown GPU"),
        (["--users", "100", "--quant", "int3"], "--quant"),
        (["--users", "100", "--model", "nope-3b"], "unknown model"),
        # fits on none of the GPUs (one RTX 4090, TP1) nor on a serverless worker
        (
            ["--users", "100", "--model", "llama-3.1-70b", "--gpus", "rtx4090", "--tp", "1"],
            "llama-3.1-70b (fp16) runs on none of the GPUs considered",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["capacity", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--users", "0"], "--users"),
        (["--users", "10", "--gpus", "tpu"], "unknown GPU"),
        (["--users", "10", "--model", "70b", "--gpus", "rtx4090", "--tp", "1"], "none of the GPUs"),
    ],
)
def test_bad_input_through_the_real_command(args: list[str], needle: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vkit", "capacity", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_the_issue_70b_case_recommends_a_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: every GPU "does-not-fit" and serverless, as only fp16 on one GPU was tried.
    args = ["capacity", "--users", "20000", "--model", "llama-3.1-70b", "--allow-quant", "fp8"]
    assert main([*args, "--gpus", "h100", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    h100 = plan["options"][0]
    assert h100["gpus"] and h100["tensor_parallel"] in (1, 2, 4, 8) and h100["quant"] == "fp8"
    assert {r["config"]: r["reason"] for r in h100["rejected"]}["TP1 fp16"] == "does-not-fit"
    assert plan["recommendation"]["choice"].endswith("fp8")
    assert main([*args, "--gpus", "h100"]) == 0
    text = capsys.readouterr().out
    assert "h100-sxm: " in text and " wins; out: does-not-fit: TP1 fp16" in text
    assert "quality: FP8" in text


def test_workload_flags_change_the_speed(capsys: pytest.CaptureFixture[str]) -> None:
    def users(*extra: str) -> float:
        # per GPU: long prompts may need a tensor-parallel replica (4,000-token prompts leave one
        # L40S too slow for 40 tok/s; a TP2 replica carries 8, 4 per GPU, against 5 on one GPU)
        assert main(["capacity", "--users", "10000", "--gpus", "l40s", "--json", *extra]) == 0
        option = json.loads(capsys.readouterr().out)["options"][0]
        return int(option["users_per_replica"]) / int(option["tensor_parallel"])

    assert users("--prompt-tokens", "4000") < users("--prompt-tokens", "100")
    assert users("--output-tokens", "200") == users()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tensor-parallel", "16"], "one node"),
        (["--tensor-parallel", "3"], "one node"),
        (["--allow-quant", "int3"], "--allow-quant"),
        (["--prompt-tokens", "-1"], "--prompt-tokens"),
        (["--output-tokens", "0"], "--output-tokens"),
        (["--context", "0"], "--context"),
        (["--serverless", "nowhere"], "unknown serverless provider"),
        (["--serverless-rate", "0"], "--serverless-rate"),
    ],
)
def test_bad_search_input_is_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["capacity", "--users", "100", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_a_70b_is_compared_with_a_70b_sized_serverless_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: "serverless $3,000/month costs less than ... (h200, $5,299)": the 7B's
    # per-second price and the 7B's 5 s per request, whatever the model.
    assert main(["capacity", "--users", "20000", "--model", "llama-3.1-70b", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    serverless = plan["serverless"]
    assert serverless["worker"] in ("80 GB (A100)", "80 GB PRO (H100)", "141 GB PRO (H200)")
    assert serverless["gpus_per_worker"] >= 2  # 131 GiB of 16-bit weights
    assert serverless["monthly_usd"] > 3 * 3_000
    assert plan["recommendation"]["choice"] != "serverless"
    assert "vs serverless $" in plan["recommendation"]["reason"]


def test_no_nvlink_makes_tensor_parallel_pay_pcie(capsys: pytest.CaptureFixture[str]) -> None:
    """An SXM kind on a board without NVLink (--no-nvlink): TP4's all-reduce over PCIe is
    slower, so the same traffic needs more GPUs; a TP1 option is the same either way."""
    args = ["capacity", "--users", "20000", "--model", "llama-3.1-70b", "--gpus", "h100"]
    assert main([*args, "--tp", "4", "--json"]) == 0
    nvlink = json.loads(capsys.readouterr().out)["options"][0]
    assert main([*args, "--tp", "4", "--no-nvlink", "--json"]) == 0
    pcie = json.loads(capsys.readouterr().out)["options"][0]
    assert pcie["tensor_parallel"] == nvlink["tensor_parallel"] == 4
    assert pcie["gpus"] > nvlink["gpus"]
    small = ["capacity", "--users", "5000", "--model", "8b", "--gpus", "h100", "--tp", "1"]
    assert main([*small, "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)["options"][0]
    assert main([*small, "--no-nvlink", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"][0]["gpus"] == alone["gpus"]


def test_enforce_eager_costs_gpus_where_the_speed_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--enforce-eager (no CUDA graphs): every step pays the kernel launches, so a replica
    held back by the per-user speed carries fewer users and the traffic takes more GPUs; the
    table says the plan assumes it."""
    args = ["capacity", "--users", "200000", "--model", "8b", "--gpus", "a100-80gb", "--tp", "1"]
    assert main([*args, "--json"]) == 0
    graphs = json.loads(capsys.readouterr().out)
    assert main([*args, "--enforce-eager", "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert (graphs["eager"], eager["eager"]) == (False, True)
    with_graphs, without = graphs["options"][0], eager["options"][0]
    assert with_graphs["limited_by"] == without["limited_by"] == "speed"
    assert without["users_per_gpu"] < with_graphs["users_per_gpu"]  # 27 against 46
    assert without["gpus"] > with_graphs["gpus"]  # 3 against 2
    assert without["gpus_pessimistic"] >= with_graphs["gpus_pessimistic"]
    assert main([*args, "--enforce-eager"]) == 0
    assert "--enforce-eager (no CUDA graphs)" in capsys.readouterr().out
