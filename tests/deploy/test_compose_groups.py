"""A compose bundle of two models (a deployment file): complete, accepted by docker-compose,
and each part loads back into the deployment it was rendered from."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import load_settings
from tests.deploy.bundle_check import bundle_problems
from tests.deploy.test_compose import docker_compose
from vkit.cli import main
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.group_fit import fit_groups
from vkit.render.compose_groups import groups_deployment

REPO = Path(__file__).resolve().parents[2]
TWO_MODELS = REPO / "deploy" / "deployments" / "two-models.yaml"


def render(out: Path, deployment: Path = TWO_MODELS) -> int:
    return main(["render", "compose", "--deployment", str(deployment), "--out", str(out)])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("groups")
    assert render(out / "compose.yaml") == 0
    return out


def compose(bundle: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((bundle / "compose.yaml").read_text())
    return loaded


def test_the_bundle_is_complete(bundle: Path) -> None:
    assert bundle_problems(bundle) == []


def test_each_group_has_its_replicas_and_the_gateway_reaches_each_directly(bundle: Path) -> None:
    services = compose(bundle)["services"]
    assert [name for name in services if name.startswith("vllm-")] == ["vllm-chat-0", "vllm-fast-0"]
    assert "nginx" not in services
    gateway = services["gateway"]
    assert set(gateway["depends_on"]) == {"vllm-chat-0", "vllm-fast-0", "redis"}
    env = gateway["environment"]
    assert env["VKIT_GATEWAY_ROUTING"] == "aware"
    # one gateway: its usage ledger in SQLite, in a named volume of its own
    assert env["VKIT_GATEWAY_LEDGER__URL"] == "sqlite:////var/lib/vkit-gateway/usage.sqlite3"
    assert "gateway-ledger:/var/lib/vkit-gateway" in gateway["volumes"]
    assert yaml.safe_load(env["VKIT_GATEWAY_UPSTREAMS"]) == [
        "http://vllm-chat-0:8000",
        "http://vllm-fast-0:8000",
    ]
    # both reserve GPU 0, each with its share of the memory
    for name in ("vllm-chat-0", "vllm-fast-0"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == ["0"]
    chat, fast = (services[n]["command"] for n in ("vllm-chat-0", "vllm-fast-0"))
    shares = [float(c[c.index("--gpu-memory-utilization") + 1]) for c in (chat, fast)]
    assert sum(shares) <= 0.92
    assert chat[chat.index("--lora-modules") + 1] == "sql=org/llama-3.1-8b-sql-lora"
    assert "--enable-lora" not in fast
    assert services["vllm-chat-0"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in services["vllm-fast-0"]["environment"]


def test_each_part_loads_back_into_the_deployment(bundle: Path) -> None:
    file = load_deployment_file(TWO_MODELS)
    deployment = groups_deployment(file, fit_groups(file))
    services = compose(bundle)["services"]
    loaded = load_settings(environ=services["gateway"]["environment"])
    assert loaded.model_dump() == deployment.gateway.model_dump()
    for group in deployment.groups:
        name = f"vllm-{group.served_model}-0"
        assert services[name]["command"] == group.vllm_argv(engine=[])


@pytest.mark.integration
def test_docker_compose_accepts_the_bundle(bundle: Path) -> None:
    env = bundle / ".env"
    env.write_text(
        env.read_text().replace(
            "ALERTMANAGER_WEBHOOK_URL=\n", "ALERTMANAGER_WEBHOOK_URL=http://hooks.invalid/x\n"
        )
    )
    argv = [*docker_compose(), "--project-directory", str(bundle), "config", "-q"]
    done = subprocess.run(argv, cwd=bundle, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_gpu_double_booked_beyond_what_fits_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heavy = tmp_path / "heavy.yaml"
    heavy.write_text(
        TWO_MODELS.read_text()
        .replace("gpu: l40s", "gpu: rtx4090")
        .replace("quant: awq", "quant: bf16")
    )
    out = tmp_path / "out"
    assert render(out / "compose.yaml", heavy) == 2
    assert not out.exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "chat and fast cannot share one rtx4090" in error[0]


def test_the_single_model_flags_cannot_be_mixed_in(tmp_path: Path) -> None:
    argv = ["render", "compose", "--deployment", str(TWO_MODELS), "--gpu", "l4"]
    assert main(argv) == 2


CPU_GROUPS = """\
gpu: cpu
groups:
  - {model: tiny-llama, served_name: tiny, gpus: [0], context: 256,
     adapters: [{name: tiny-sql, source: /models/sql, rank: 8}], lora: {runtime_updates: true}}
  - {model: tiny-llama, served_name: tiny-two, gpus: [1], context: 256}
"""


@pytest.mark.integration
def test_a_cpu_deployment_renders_vkit_launch_replicas_with_lora(tmp_path: Path) -> None:
    file = tmp_path / "cpu.yaml"
    file.write_text(CPU_GROUPS)
    out = tmp_path / "bundle"
    assert render(out / "compose.yaml", file) == 0
    assert bundle_problems(out) == []
    services = compose(out)["services"]
    assert "dcgm-exporter" not in services
    tiny, two = services["vllm-tiny-0"], services["vllm-tiny-two-1"]
    assert tiny["command"][tiny["command"].index("--") + 1 :][:1] == ["--enable-lora"]
    assert tiny["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert (
        tiny["environment"]["VLLM_CPU_OMP_THREADS_BIND"],
        two["environment"]["VLLM_CPU_OMP_THREADS_BIND"],
    ) == ("0", "1")
    test_docker_compose_accepts_the_bundle(out)


def test_an_adapter_in_a_host_directory_is_mounted_into_its_groups_replicas(
    tmp_path: Path,
) -> None:
    """vLLM in the container reads the adapter where the bundle mounts it, read-only; an
    adapter named by its Hugging Face id is left to the cache volume."""
    adapter = tmp_path / "lora" / "sql"
    adapter.mkdir(parents=True)
    file = tmp_path / "cpu.yaml"
    file.write_text(
        CPU_GROUPS.replace("source: /models/sql", f"source: {adapter}")
        .replace(
            "lora: {runtime_updates: true}",
            "lora: {max_loras: 2}",
        )
        .replace(
            f"source: {adapter}, rank: 8}}]",
            f"source: {adapter}, rank: 8}}, {{name: tiny-hub, source: org/hub-lora, rank: 8}}]",
        )
    )
    out = tmp_path / "bundle"
    assert render(out / "compose.yaml", file) == 0
    services = compose(out)["services"]
    tiny, two = services["vllm-tiny-0"], services["vllm-tiny-two-1"]
    modules = tiny["command"][tiny["command"].index("--lora-modules") + 1 :]
    assert modules == ["tiny-sql=/opt/vkit/lora/tiny-sql", "tiny-hub=org/hub-lora"]
    assert f"${{VKIT_ADAPTER_TINY_SQL:-{adapter}}}:/opt/vkit/lora/tiny-sql:ro" in tiny["volumes"]
    assert not [v for v in two["volumes"] if "/opt/vkit/lora" in v]
    assert bundle_problems(out) == []  # the variable is in .env.example
