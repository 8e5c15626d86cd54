"""``vkit render compose --tp N``: one replica per GPU set, sized by the fit solver for N GPUs,
checked like the single-GPU bundle (docker-compose config, nginx -t on its site)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from tests.deploy.test_compose import compose_config, filled_env
from tests.deploy.test_compose_nginx_resolve import resolving_nginx
from vkit.cli import main
from vkit.nginx_conf import nginx_argv, wrap_standalone

TP = ["render", "compose", "--gpu", "h100-sxm", "--gpus", "0,1,2,3", "--tp", "2"]
TP += ["--model", "llama-3.1-70b", "--quant", "fp8"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tp") / "compose.yaml"
    assert main([*TP, "--out", str(out)]) == 0
    return out.parent


@pytest.fixture(scope="module")
def compose(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((bundle / "compose.yaml").read_text())
    return data


def flags(command: list[str]) -> dict[str, str]:
    return dict(zip(command[::2], command[1::2], strict=True))


def test_one_replica_per_gpu_set_named_for_it(compose: dict[str, Any]) -> None:
    replicas = {k: v for k, v in compose["services"].items() if k.startswith("vllm-")}
    assert sorted(replicas) == ["vllm-0-1", "vllm-2-3"]
    for name, service in replicas.items():
        (devices,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices["device_ids"] == name.removeprefix("vllm-").split("-")
        assert flags(service["command"])["--tensor-parallel-size"] == "2"
        assert service["ipc"] == "host"  # /dev/shm for NCCL
        assert service["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
        env = service["environment"]
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert "NCCL_DEBUG" in env
    nginx = compose["services"]["nginx"]["depends_on"]
    assert sorted(nginx) == sorted(replicas)


def test_the_replicas_are_sized_by_the_fit_solver_for_two_gpus(compose: dict[str, Any]) -> None:
    gpu, model = get_gpu("h100-sxm"), load_model("llama-3.1-70b")
    two = plan_fit(FitRequest(quant="fp8", tensor_parallel=2), gpu, model)
    one = plan_fit(FitRequest(quant="fp8"), gpu, model)
    rendered = flags(compose["services"]["vllm-0-1"]["command"])
    assert int(rendered["--max-num-seqs"]) == two.max_num_seqs != one.max_num_seqs
    assert int(rendered["--max-model-len"]) == two.max_model_len


def test_nginx_and_prometheus_see_the_set_replicas(bundle: Path) -> None:
    site = (bundle / "nginx" / "vkit.conf").read_text()
    assert "server vllm-0-1:8000 resolve" in site and "server vllm-2-3:8000 resolve" in site
    scrape = yaml.safe_load((bundle / "prometheus" / "prometheus.yml").read_text())
    targets = [
        target
        for job in scrape["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert {"vllm-0-1:8000", "vllm-2-3:8000"} <= set(targets)


@pytest.mark.integration
def test_docker_compose_accepts_the_tp_file(bundle: Path, tmp_path: Path) -> None:
    result = compose_config(tmp_path, filled_env(), (bundle / "compose.yaml").read_text())
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_nginx_accepts_the_tp_site(bundle: Path, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    site = (
        (bundle / "nginx" / "vkit.conf")
        .read_text()
        .replace("listen 8000;", "listen 127.0.0.1:8000;")
    )
    conf.write_text(wrap_standalone(site))
    argv = nginx_argv(conf, tmp_path, binary=resolving_nginx(), test=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("gpus", "tp", "words"),
    [
        ("0,1,2", "2", "cannot be split into sets of 2"),
        ("0,1", "0", "tp"),
        (",".join(str(i) for i in range(16)), "16", "tensor_parallel"),  # the solver's bound
    ],
)
def test_a_bad_tensor_parallel_size_is_a_one_line_usage_error(
    gpus: str, tp: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = list(TP)
    args[args.index("--gpus") + 1], args[args.index("--tp") + 1] = gpus, tp
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and words in err, err


def test_the_header_names_the_command_that_renders_it(bundle: Path) -> None:
    first = (bundle / "compose.yaml").read_text().splitlines()[0]
    assert "vkit render compose --gpu h100-sxm --gpus 0,1,2,3 --tp 2 --model llama-3.1-70b" in first


@pytest.mark.parametrize(
    ("model", "online_flag"),
    [("llama-3.1-70b", False), ("qwen2.5-14b", True)],
)
def test_fp8_is_quantized_at_load_only_without_an_fp8_checkpoint(
    tmp_path: Path, model: str, online_flag: bool
) -> None:
    """A published FP8 checkpoint declares its method (compressed-tensors): vLLM refuses an
    extra ``--quantization fp8`` beside it. Without one, vLLM quantizes the 16-bit weights."""
    from launcher.sizing.checkpoints import checkpoint_for

    out = tmp_path / "compose.yaml"
    argv = ["render", "compose", "--gpu", "h100-sxm", "--gpus", "0,1", "--tp", "2"]
    assert main([*argv, "--model", model, "--quant", "fp8", "--out", str(out)]) == 0
    services = yaml.safe_load(out.read_text())["services"]
    command = services["vllm-0-1"]["command"]
    assert ("--quantization" in command) is online_flag
    checkpoint = checkpoint_for(model, "fp8")
    assert checkpoint is not None
    assert checkpoint.repo in command[command.index("--model") + 1]  # named in the message
