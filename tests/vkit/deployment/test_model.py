"""The deployment model: room for several replica groups; each builds its vLLM command with
the launcher's one builder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings_env import settings_from_values
from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpu_sets import GpuSet
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from launcher.supervision.launch_spec import LaunchSettings, plan_vllm_argv
from vkit.deployment import Deployment, DrainBudget, ReplicaGroup
from vkit.deployment.model import container_group


def group(
    model: str, quant: str = "bf16", gpu_sets: tuple[GpuSet, ...] = (), load: str | None = None
) -> ReplicaGroup:
    request = FitRequest.model_validate({"quant": quant})
    plan = plan_fit(request, get_gpu("h100-sxm"), load_model(model))
    return container_group(
        model=model,
        served_model=model,
        plan=plan,
        quant=plan.quant,
        shutdown_timeout_s=30,
        gpu_sets=gpu_sets,
        load=load,
    )


def test_a_group_builds_its_command_with_the_launchers_builder() -> None:
    one = group("llama-3.1-70b", "fp8", gpu_sets=(GpuSet(("0",)), GpuSet(("1",))))
    assert one.vllm_argv(engine=[]) == plan_vllm_argv(one.launch, one.plan, engine=[])
    assert one.replica_count == 2
    assert "--quantization" not in one.vllm_argv(engine=[])  # a pre-quantized checkpoint


def test_the_load_reference_replaces_only_what_vllm_loads() -> None:
    one = group("qwen2.5-14b", "fp8", load="${VLLM_MODEL}")
    argv = one.vllm_argv(engine=[])
    assert argv[argv.index("--model") + 1] == "${VLLM_MODEL}"
    assert argv[argv.index("--quantization") + 1] == "fp8"  # a 16-bit checkpoint: online FP8


def test_a_deployment_holds_several_models_but_not_one_twice() -> None:
    gateway = settings_from_values({"routing": "aware"})
    two = Deployment(groups=(group("llama-3.1-8b"), group("qwen2.5-14b")), gateway=gateway)
    assert [g.served_model for g in two.groups] == ["llama-3.1-8b", "qwen2.5-14b"]
    assert two.routing == "aware"
    with pytest.raises(ValidationError, match="same model"):
        Deployment(groups=(group("llama-3.1-8b"), group("llama-3.1-8b")), gateway=gateway)
    with pytest.raises(ValidationError):
        Deployment(groups=(), gateway=gateway)


def test_the_drain_budget_adds_the_margin() -> None:
    assert DrainBudget(replica_s=30).grace_s(30) == 45


def test_launch_settings_are_what_vkit_launch_takes() -> None:
    assert isinstance(group("llama-3.1-8b").launch, LaunchSettings)


def test_replicas_sharing_a_host_each_have_a_port_and_no_port_twice() -> None:
    launch = LaunchSettings(model="m", cpu=True)
    one = ReplicaGroup(launch=launch, replicas=2, ports=(8001, 8002))
    assert [one.replica_launch(i).port for i in range(2)] == [8001, 8002]
    assert ReplicaGroup(launch=launch, replicas=1).replica_launch(0) == launch
    with pytest.raises(ValidationError, match="2 ports for 3 replicas"):
        ReplicaGroup(launch=launch, replicas=3, ports=(8001, 8002))
    other = ReplicaGroup(launch=LaunchSettings(model="n", cpu=True), replicas=1, ports=(8002,))
    with pytest.raises(ValidationError, match="one port"):
        Deployment(groups=(one, other), gateway=settings_from_values({}))
