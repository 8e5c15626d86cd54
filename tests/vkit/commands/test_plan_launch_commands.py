"""``vkit plan`` / ``vkit launch --dry-run``: in-process through ``vkit.cli.main``, and a
few through a real ``python -m vkit`` subprocess (exit codes, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.errors import CheckpointMismatchError
from launcher.sizing.checkpoint_check import HubConfigSource
from launcher.supervision.vllm_args import VllmOptions
from vkit.cli import build_parser, main
from vkit.commands.launch import run_launch
from vkit.exit_codes import exit_code_for, message_for

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def vkit(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """Run ``vkit ARGS`` in-process; argparse's own errors exit through SystemExit."""

    def run(*args: str) -> Done:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def vkit_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vkit", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_plan_prints_report_and_exact_command(vkit: Callable[..., Done]) -> None:
    done = vkit(
        "plan",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "rtx4090",
        "--quant",
        "awq",
        "--concurrency",
        "16",
    )
    assert done.returncode == 0, done.stderr
    assert "FITS" in done.stdout
    assert "max_model_len 7,168" in done.stdout
    command = done.stdout.split("vLLM command:\n", 1)[1].splitlines()[0].split()
    assert command[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--max-model-len") + 1] == "7168"


def test_plan_json_has_the_same_numbers(vkit: Callable[..., Done]) -> None:
    done = vkit("plan", "--model", "qwen3-8b", "--gpu", "l4", "--context", "40960", "--json")
    data = json.loads(done.stdout)
    assert data["kv_bytes_per_token"] == 144 * 1024
    assert data["fits"] is (done.returncode == 0)
    if data["fits"]:
        assert "--max-model-len" in data["command"]


def test_plan_that_cannot_fit_exits_1_with_numbers_and_ways_out(vkit: Callable[..., Done]) -> None:
    done = vkit("plan", "--model", "70b", "--gpu", "rtx4090", "--quant", "awq")
    assert done.returncode == 1
    assert "DOES NOT FIT" in done.stdout
    assert "ways out" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "8b", "--gpu", "v100"], "known GPUs: a10, a100-40gb, a100-80gb"),
        (["--model", "gpt-x", "--gpu", "l4"], "known models:"),
        (["--model", "8b", "--gpu", "l4", "--concurrency", "0"], "concurrency"),
        (["--model", "8b", "--gpu", "l4", "--concurrency", "many"], "invalid int value"),
        (["--model", "8b", "--gpu", "l4", "--quant", "int3"], "invalid choice"),
        (["--model", "8b", "--gpu", "l4", "--context", "4096", "--concurrency", "4"], "not both"),
    ],
)
def test_bad_plan_input_is_one_line_and_exit_2(
    vkit: Callable[..., Done], args: list[str], needle: str
) -> None:
    done = vkit("plan", *args)
    assert done.returncode == 2
    assert needle in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_plan_eager_says_so_in_the_command_and_pays_in_speed(vkit: Callable[..., Done]) -> None:
    args = ("plan", "--model", "8b", "--gpu", "a100-80gb", "--json")
    graphs = json.loads(vkit(*args).stdout)
    eager = json.loads(vkit(*args, "--enforce-eager").stdout)
    assert "--enforce-eager" in eager["command"] and "--enforce-eager" not in graphs["command"]
    # docs/speed-measurements.md#eager-no-cuda-graphs: ~0.22 ms more per layer and step
    assert eager["single_stream_tok_s"] < 0.75 * graphs["single_stream_tok_s"]
    assert eager["speed_band"] == graphs["speed_band"] and eager["speed_band"]["over"] > 0


def test_plan_no_nvlink_slows_tensor_parallel_only(vkit: Callable[..., Done]) -> None:
    args = ("plan", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--quant", "bf16", "--json")
    tp4 = (*args, "--tensor-parallel", "4")
    nvlink = json.loads(vkit(*tp4).stdout)
    pcie = json.loads(vkit(*tp4, "--no-nvlink").stdout)
    assert pcie["single_stream_tok_s"] < nvlink["single_stream_tok_s"]
    assert pcie["max_model_len"] == nvlink["max_model_len"]  # memory is the same
    one = ("plan", "--model", "8b", "--gpu", "h100-sxm", "--json")
    assert (
        json.loads(vkit(*one, "--no-nvlink").stdout)["single_stream_tok_s"]
        == json.loads(vkit(*one).stdout)["single_stream_tok_s"]
    )


def test_fp8_on_an_a100_plans_weight_only(vkit: Callable[..., Done]) -> None:
    # Before: refused ("FP8 W8A8 needs an Ada or Hopper GPU"), exit 2; vLLM runs it through
    # FP8 Marlin, weight-only.
    done = vkit("plan", "--model", "8b", "--gpu", "a100-80gb", "--quant", "fp8")
    assert done.returncode == 0, done.stderr
    assert "fp8 weight-only (FP8 Marlin, W8A16) weights" in done.stdout
    assert "Meta-Llama-3.1-8B-Instruct-FP8" in done.stdout


def test_launch_dry_run_cpu_with_profile_flags_and_extras(
    vkit: Callable[..., Done], tmp_path: Path
) -> None:
    model = tmp_path / "qwen3-4b"
    model.mkdir()
    shutil.copy(REPO / "configs/models/qwen3-4b/config.json", model / "config.json")
    done = vkit(
        "launch",
        "--model",
        str(model),
        "--cpu",
        "--max-model-len",
        "1024",
        "--port",
        "9123",
        "--dry-run",
        "--",
        "--seed",
        "7",
        "--max-model-len",
        "512",
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("PYTHONPATH=") and " VLLM_CPU_KVCACHE_SPACE=1 " in line
    tokens = line.split()
    assert tokens[tokens.index("--port") + 1] == "9123"
    assert tokens.count("--max-model-len") == 1
    assert tokens[tokens.index("--max-model-len") + 1] == "512"
    assert "--gpu-memory-utilization" not in tokens


def test_launch_dry_run_profile_for_a_gpu(vkit: Callable[..., Done]) -> None:
    done = vkit("launch", "--profile", "llama-3.1-8b-rtx4090", "--dry-run", "--port", "8100")
    assert done.returncode == 0, done.stderr
    tokens = done.stdout.split()
    assert tokens[tokens.index("--model") + 1].endswith("AWQ-INT4")
    assert tokens[tokens.index("--max-model-len") + 1] == "7168"
    assert tokens[tokens.index("--port") + 1] == "8100"


def test_launch_refuses_a_plan_that_does_not_fit(vkit: Callable[..., Done]) -> None:
    done = vkit(
        "launch", "--model", "8b", "--gpu", "rtx4090", "--max-model-len", "131072", "--dry-run"
    )
    assert done.returncode == 1
    assert "does not fit" in done.stderr and "Ways out" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_launch_bad_input_is_one_line_and_exit_2(vkit: Callable[..., Done]) -> None:
    done = vkit(
        "launch", "--model", "8b", "--gpu", "l4", "--dry-run", "--", "--seed", "1", "--seed", "2"
    )
    assert done.returncode == 2
    assert "twice" in done.stderr
    missing = vkit("launch", "--profile", "no-such-profile", "--dry-run")
    assert missing.returncode == 2
    assert "tiny-cpu" in missing.stderr


@pytest.mark.integration
def test_real_process_bad_input_exit_codes_and_no_traceback() -> None:
    unknown = vkit_process("plan", "--model", "8b", "--gpu", "v100")
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "known GPUs" in unknown.stderr
    bad_flag = vkit_process("launch", "--model", "8b", "--port", "http", "--dry-run")
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.count("\n") == 1 and "Traceback" not in bad_flag.stderr
    no_fit = vkit_process("plan", "--model", "70b", "--gpu", "l4", "--quant", "awq")
    assert no_fit.returncode == 1
    assert "DOES NOT FIT" in no_fit.stdout and not no_fit.stderr


def test_plan_prints_a_checkpoint_that_can_run(vkit: Callable[..., Done]) -> None:
    # The case: --quant awq used to print the 140 GB bf16 repository as --model.
    done = vkit("plan", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--quant", "awq")
    assert done.returncode == 0, done.stderr
    command = done.stdout.split("vLLM command:\n", 1)[1].split()
    assert command[command.index("--model") + 1] == (
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    )
    assert "--quantization" not in command  # the checkpoint declares awq; vLLM picks Marlin
    fp8 = vkit("plan", "--model", "8b", "--gpu", "h100-sxm", "--quant", "fp8", "--json")
    data = json.loads(fp8.stdout)
    assert data["checkpoint"]["repo"] == "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8"
    assert "--quantization" not in data["command"]  # pre-quantized: no online FP8 on top


def test_plan_without_a_known_checkpoint_says_how_to_make_one(vkit: Callable[..., Done]) -> None:
    done = vkit("plan", "--model", "mistral-7b-v0.3", "--gpu", "rtx4090", "--quant", "awq")
    assert done.returncode == 0, done.stderr
    assert "FITS" in done.stdout and "vLLM command" not in done.stdout
    assert "NONE KNOWN" in done.stdout and "llm-compressor" in done.stdout


def test_launch_without_a_known_checkpoint_is_one_line_and_exit_2(
    vkit: Callable[..., Done],
) -> None:
    done = vkit("launch", "--model", "gemma-2-9b", "--gpu", "l40s", "--quant", "gptq", "--dry-run")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "llm-compressor" in done.stderr
    assert done.stdout == ""


def test_plan_best_searches_gpu_quantization_and_tensor_parallel(
    vkit: Callable[..., Done],
) -> None:
    done = vkit(
        "plan", "--model", "70b", "--best", "--concurrency", "32", "--gpu", "h100",
        "--allow-quant", "fp8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("best for 32 users at >= 40 tok/s: ") and "h100-sxm TP" in first
    command = done.stdout.split("vLLM command:\n", 1)[1].split()
    tp = int(command[command.index("--tensor-parallel-size") + 1])
    assert f"TP{tp} " in first


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "70b", "--gpu", "h100", "--tp", "16"], "tensor_parallel"),
        (["--model", "70b", "--gpu", "h100", "--tp", "3"], "does not divide"),
        (["--model", "8b", "--gpu", "h100", "--prompt-tokens", "0"], "--prompt-tokens"),
        (["--model", "8b", "--gpu", "h100", "--output-tokens", "-5"], "--output-tokens"),
        (["--model", "8b", "--best", "--allow-quant", "int3"], "--allow-quant"),
    ],
)
def test_bad_plan_combinations_are_one_line_and_exit_2(
    vkit: Callable[..., Done], args: list[str], needle: str
) -> None:
    done = vkit("plan", *args)
    assert done.returncode == 2, done.stdout
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


AWQ_70B = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
KEPT_AWQ_70B = (
    REPO / "tests/launcher/sizing/checkpoint_configs" / f"{AWQ_70B.replace('/', '--')}.json"
)
LAUNCH_70B_AWQ = ["launch", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--quant", "awq"]


def hub_cache_with(root: Path, group_size: int | None = None) -> Path:
    """A Hugging Face hub cache holding the kept config.json (its group_size changed)."""
    config = json.loads(KEPT_AWQ_70B.read_bytes())
    if group_size is not None:
        config["quantization_config"]["group_size"] = group_size
    snapshot = root / f"models--{AWQ_70B.replace('/', '--')}" / "snapshots" / ("2" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return root


class EngineRecorder:
    """The supervisor's argv builder: records each start, runs a Python that exits 0."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __call__(self, options: VllmOptions) -> list[str]:
        self.started.append(options.model)
        return [sys.executable, "-c", "pass"]


def test_launch_refuses_a_catalog_checkpoint_whose_config_disagrees(tmp_path: Path) -> None:
    engine = EngineRecorder()
    source = HubConfigSource(hub_cache_with(tmp_path, group_size=32), offline=True)
    args = build_parser().parse_args(LAUNCH_70B_AWQ)
    with pytest.raises(CheckpointMismatchError) as caught:
        run_launch(args, config_source=source, argv_for=engine)
    assert engine.started == []  # vLLM never started
    assert exit_code_for(caught.value) == 2
    message = message_for(caught.value)
    assert "\n" not in message and "llama-3.1-70b/awq" in message
    assert "group_size: catalog 128, config.json 32" in message


@pytest.mark.integration
def test_launch_checks_a_matching_config_then_starts_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = EngineRecorder()
    source = HubConfigSource(hub_cache_with(tmp_path), offline=True)
    args = build_parser().parse_args(LAUNCH_70B_AWQ)
    assert run_launch(args, config_source=source, argv_for=engine) == 0
    assert engine.started == [AWQ_70B]
    assert f"vkit launch: note: checked {AWQ_70B}/config.json" in capsys.readouterr().err


def launch_with_hub_cache(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vkit", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip


@pytest.mark.integration
def test_real_process_dry_run_reads_the_hub_cache_named_by_the_environment(
    tmp_path: Path,
) -> None:
    mismatch = launch_with_hub_cache(
        hub_cache_with(tmp_path / "bad", 32), *LAUNCH_70B_AWQ, "--dry-run"
    )
    assert mismatch.returncode == 2 and mismatch.stdout == ""
    assert mismatch.stderr.count("\n") == 1 and "group_size: catalog 128" in mismatch.stderr
    empty = launch_with_hub_cache(tmp_path / "empty", *LAUNCH_70B_AWQ, "--dry-run")
    assert empty.returncode == 0, empty.stderr
    assert f"--model {AWQ_70B}" in empty.stdout
    assert (
        f"vkit launch: note: could not read {AWQ_70B}/config.json to check the catalog's facts: "
        "vLLM will report it if the repository is unreachable"
    ) in empty.stderr
