"""plan_stack: settings in, process specs out (pure)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.deploy.gateway_env import unknown_gateway_variables
from vkit.stack.specs import HttpCheck, VllmCheck
from vkit.stack.stack_plan import StackLayout, StackPorts, cpu_binding, plan_stack
from vkit.stack.up_settings import UpSettings

PORTS = StackPorts(gateway=8000, nginx=9001, replicas=(9101, 9102), redis=None)


def make_plan(settings: UpSettings, ports: StackPorts = PORTS, cpu_count: int = 2):
    layout = StackLayout(Path("run"))
    return plan_stack(
        settings, ports, layout, model_path="/m/tiny", python="/py", cpu_count=cpu_count
    )


def test_default_plan_starts_replicas_nginx_then_gateway() -> None:
    plan = make_plan(UpSettings())
    assert [s.name for s in plan.specs] == ["replica-0", "replica-1", "nginx", "gateway"]
    assert plan.gateway_url == "http://127.0.0.1:8000"
    assert plan.model_name == "tiny-llama"


def test_cpu_replicas_use_launch_on_the_tiny_model_pinned_per_core() -> None:
    replicas = make_plan(UpSettings()).named("replica-")
    for index, (spec, port) in enumerate(zip(replicas, PORTS.replicas, strict=True)):
        argv = list(spec.argv)
        assert argv[:4] == ["/py", "-m", "vkit", "launch"]
        assert argv[argv.index("--port") + 1] == str(port)
        assert argv[argv.index("--model") + 1] == "/m/tiny"
        assert argv[argv.index("--max-model-len") + 1] == "256"
        assert "--cpu" in argv and "--enforce-eager" in argv
        assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == str(index)
        assert spec.env["HF_HUB_OFFLINE"] == "1"
        assert spec.ready == (VllmCheck(f"http://127.0.0.1:{port}", "tiny-llama"),)


@pytest.mark.parametrize(
    ("index", "replicas", "cpus", "expected"),
    [(0, 2, 2, "0"), (1, 2, 2, "1"), (2, 3, 2, "0"), (0, 2, 8, "0-3"), (1, 2, 8, "4-7")],
)
def test_cpu_binding_gives_each_replica_its_own_cores(
    index: int, replicas: int, cpus: int, expected: str
) -> None:
    assert cpu_binding(index, replicas, cpus) == expected


def test_gpu_replicas_get_one_device_each_and_no_cpu_flags() -> None:
    plan = make_plan(UpSettings(model="meta-llama/Llama-3.1-8B-Instruct", gpu="rtx4090"))
    for index, spec in enumerate(plan.named("replica-")):
        assert "--cpu" not in spec.argv
        assert spec.argv[spec.argv.index("--gpu") + 1] == "rtx4090"
        assert spec.env["CUDA_VISIBLE_DEVICES"] == str(index)
        assert spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # index = nvidia-smi's
        assert "VLLM_CPU_OMP_THREADS_BIND" not in spec.env
        assert "--max-model-len" not in spec.argv
    assert plan.model_name == "meta-llama/Llama-3.1-8B-Instruct"


def test_nginx_round_robins_the_replica_ports_and_stops_gracefully() -> None:
    plan = make_plan(UpSettings())
    assert "server 127.0.0.1:9101" in plan.nginx_conf
    assert "server 127.0.0.1:9102" in plan.nginx_conf
    assert "listen 127.0.0.1:9001;" in plan.nginx_conf
    (nginx,) = plan.named("nginx")
    assert nginx.stop_signal == signal.SIGQUIT
    assert nginx.ready == (HttpCheck("http://127.0.0.1:9001/nginx_health"),)


def test_gateway_points_at_nginx_and_redis_only_when_asked() -> None:
    (gateway,) = make_plan(UpSettings()).named("gateway")
    assert json.loads(gateway.env["VKIT_GATEWAY_UPSTREAMS"]) == ["http://127.0.0.1:9001"]
    assert "VKIT_GATEWAY_REDIS_URL" not in gateway.env
    assert gateway.argv[gateway.argv.index("--port") + 1] == "8000"

    ports = StackPorts(gateway=8000, nginx=9001, replicas=(9101,), redis=9200)
    plan = make_plan(UpSettings(redis=True, replicas=1), ports)
    (gateway,) = plan.named("gateway")
    assert gateway.env["VKIT_GATEWAY_REDIS_URL"] == "redis://127.0.0.1:9200/0"
    (redis,) = plan.named("redis")
    assert redis.argv[redis.argv.index("--port") + 1] == "9200"


def test_stop_tiers_close_the_front_door_first() -> None:
    ports = StackPorts(gateway=8000, nginx=9001, replicas=(9101,), redis=9200)
    plan = make_plan(UpSettings(redis=True, replicas=1), ports)
    tiers = {spec.name: spec.stop_tier for spec in plan.specs}
    assert tiers["gateway"] < tiers["nginx"] < tiers["replica-0"] < tiers["redis"]


def test_settings_refuse_gpu_without_model_and_mismatched_ports() -> None:
    with pytest.raises(ValidationError, match="--gpu needs --model"):
        UpSettings(gpu="h100")
    with pytest.raises(ValidationError, match="3 replicas"):
        UpSettings(replicas=3, replica_ports=[1, 2])


def test_gateway_counts_prompts_with_the_served_models_tokenizer() -> None:
    (gateway,) = make_plan(UpSettings()).named("gateway")
    tokenizers = json.loads(gateway.env["VKIT_GATEWAY_TOKENIZERS__MODELS"])
    assert tokenizers == {"tiny-llama": str(Path("run") / "tiny-llama")}
    model = "meta-llama/Llama-3.1-8B-Instruct"
    plan = make_plan(UpSettings(model=model, served_model_name="llama", gpu="rtx4090"))
    (gateway,) = plan.named("gateway")
    assert json.loads(gateway.env["VKIT_GATEWAY_TOKENIZERS__MODELS"]) == {"llama": model}


def test_the_gateway_serves_metrics_on_a_loopback_admin_port_when_given_one() -> None:
    (bare,) = make_plan(UpSettings()).named("gateway")
    assert "VKIT_GATEWAY_ADMIN_PORT" not in bare.env
    ports = StackPorts(gateway=8000, nginx=9001, replicas=(9101,), gateway_admin=9300)
    (gateway,) = make_plan(UpSettings(replicas=1), ports).named("gateway")
    assert gateway.env["VKIT_GATEWAY_ADMIN_PORT"] == "9300"
    assert gateway.env["VKIT_GATEWAY_ADMIN_HOST"] == "127.0.0.1"
    assert unknown_gateway_variables(gateway.env) == []
