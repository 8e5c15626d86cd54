"""The CPU variant of the compose bundle (``vkit render compose --gpu cpu``): replicas that
need no GPU, each ``vkit launch --cpu`` on its own core in the CPU engine image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.sizing.fit import CpuTarget, FitRequest, plan_fit
from launcher.sizing.models import load_model
from vkit.cli import build_parser, main
from vkit.deployment.images import from_env
from vkit.render.bundle import PROMETHEUS_FILE, render_compose_bundle
from vkit.render.compose import ComposeSpec, build_compose
from vkit.render.compose_cpu import CPU_IMAGE, CPU_KV_CACHE_GIB


def cpu_compose(cores: list[str]) -> dict[str, Any]:
    model = load_model("tiny-llama")
    plan = plan_fit(FitRequest(context=256), CpuTarget(kv_cache_space_gib=CPU_KV_CACHE_GIB), model)
    spec = ComposeSpec(gpu="cpu", gpu_ids=cores, model="tiny-llama")
    return build_compose(spec, plan)


def test_cpu_replicas_reserve_no_gpu_and_there_is_no_dcgm_exporter() -> None:
    compose = cpu_compose(["0", "1"])
    services = compose["services"]
    assert [name for name in services if name.startswith("vllm-")] == ["vllm-0", "vllm-1"]
    assert "dcgm-exporter" not in services
    for name in ("vllm-0", "vllm-1"):
        assert "deploy" not in services[name] and "ipc" not in services[name]
        assert services[name]["image"] == from_env(CPU_IMAGE)
        assert "CUDA_DEVICE_ORDER" not in services[name]["environment"]


def test_each_replica_runs_vkit_launch_cpu_pinned_to_its_core() -> None:
    services = cpu_compose(["0", "1"])["services"]
    for core, name in (("0", "vllm-0"), ("1", "vllm-1")):
        service = services[name]
        entrypoint = service["entrypoint"]
        # The compose supervisor still watches /health; the server it runs is vkit launch.
        assert entrypoint[entrypoint.index("--") + 1 :] == ["vkit", "launch"]
        env = service["environment"]
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == core
        assert env["VLLM_CPU_KVCACHE_SPACE"] == str(CPU_KV_CACHE_GIB)
        assert env["HF_HUB_OFFLINE"] == "1"  # the tiny model is built, not downloaded
        assert env["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")
        # vkit launch parses the command back into its settings: --cpu, eager, the context.
        args = build_parser().parse_args(["launch", *service["command"]])
        assert args.cpu and args.enforce_eager
        assert (args.model, args.served_model_name, args.max_model_len) == (
            "tiny-llama",
            "tiny-llama",
            256,
        )
        assert (args.host, args.port) == ("0.0.0.0", 8000)


def test_the_gateway_reads_the_tiny_models_tokenizer_from_the_shared_cache() -> None:
    services = cpu_compose(["0"])["services"]
    replica_dir = services["vllm-0"]["environment"]["VKIT_MODELS_DIR"]
    mounts = dict(v.split(":")[:2][::-1] for v in services["vllm-0"]["volumes"][:1])
    gateway_env = services["gateway"]["environment"]
    tokenizers = yaml.safe_load(gateway_env["VKIT_GATEWAY_TOKENIZERS__MODELS"])
    # The same volume: the replica's models dir under its HF home is the gateway's path.
    ((replica_home, volume),) = mounts.items()
    gateway_home = next(
        v.split(":")[1] for v in services["gateway"]["volumes"] if v.startswith(volume + ":")
    )
    expected = replica_dir.replace(replica_home, gateway_home) + "/tiny-llama"
    assert tokenizers == {"tiny-llama": expected}


def test_prometheus_scrapes_no_dcgm_exporter_on_cpu() -> None:
    model = load_model("tiny-llama")
    plan = plan_fit(FitRequest(context=256), CpuTarget(kv_cache_space_gib=1), model)
    spec = ComposeSpec(gpu="cpu", gpu_ids=["0"], model="tiny-llama")
    files = render_compose_bundle(spec, plan, price_per_hour=None, command="vkit render")
    jobs = [job["job_name"] for job in yaml.safe_load(files[PROMETHEUS_FILE])["scrape_configs"]]
    assert jobs == ["vkit-gateway", "vllm", "prometheus"]


def test_the_cli_renders_the_cpu_bundle_and_refuses_tensor_parallel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compose.yaml"
    cpu = ["render", "compose", "--gpu", "cpu", "--gpus", "0", "--model", "tiny-llama"]
    assert main([*cpu, "--context", "256", "--out", str(out)]) == 0
    services = yaml.safe_load(out.read_text())["services"]
    assert services["vllm-0"]["image"] == from_env(CPU_IMAGE) and "dcgm-exporter" not in services
    assert out.read_text().startswith(f"# Rendered by `vkit {' '.join(cpu)} --context 256`")
    capsys.readouterr()
    assert main([*cpu[:5], "0,1", "--tp", "2", "--model", "tiny-llama"]) == 2
    assert capsys.readouterr().err.strip().endswith("--tp must be 1")
