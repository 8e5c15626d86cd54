"""vkit up's stack as a Deployment: plan_stack only translates it (each replica's
``vkit launch`` flags are its group's settings, the gateway's variables its settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.settings import load_settings
from launcher.supervision.profiles import LaunchEnvironment
from vkit.cli import build_parser
from vkit.commands.launch import settings_from
from vkit.stack.stack_plan import StackLayout, StackPorts, plan_stack, stack_deployment
from vkit.stack.up_settings import UpSettings

LAYOUT = StackLayout(Path("/run/vkit"))


def ports_for(settings: UpSettings) -> StackPorts:
    return StackPorts(
        gateway=settings.port,
        nginx=8100,
        replicas=tuple(8101 + i for i in range(settings.replicas)),
        redis=6390 if settings.redis else None,
        gateway_admin=9190,
    )


@pytest.mark.parametrize(
    "fields",
    [{}, {"replicas": 3}, {"routing": "aware"}, {"redis": True},
     {"gpu": "rtx4090", "model": "org/m", "max_model_len": 4096, "shutdown_timeout_s": 2.5}],
    ids=str,
)  # fmt: skip
def test_each_replica_runs_its_groups_settings_and_the_gateway_its_settings(
    fields: dict[str, Any],
) -> None:
    settings = UpSettings(**fields)
    ports = ports_for(settings)
    deployment = stack_deployment(settings, ports, LAYOUT, model_path="/m")
    plan = plan_stack(settings, ports, LAYOUT, model_path="/m", python="py", cpu_count=4)
    group = deployment.group
    assert group.ports == ports.replicas
    for index, spec in enumerate(plan.named("replica-")):
        assert spec.argv[:4] == ("py", "-m", "vkit", "launch")
        args = build_parser().parse_args(list(spec.argv[3:]))
        launched = settings_from(args, LaunchEnvironment(vllm_cpu_kvcache_space=None))
        assert launched == group.replica_launch(index)
    gateway = plan.named("gateway")[0]
    env = {k: v for k, v in gateway.env.items() if k.startswith("VKIT_GATEWAY_")}
    assert load_settings(environ=env).model_dump() == deployment.gateway.model_dump()
    assert (plan.named("nginx") == []) == (deployment.routing == "aware")


def test_on_gpus_replica_i_owns_gpu_i() -> None:
    settings = UpSettings(gpu="rtx4090", model="org/m", replicas=2)
    deployment = stack_deployment(settings, ports_for(settings), LAYOUT, model_path="org/m")
    assert [s.cuda_visible_devices for s in deployment.group.gpu_sets] == ["0", "1"]
    plan = plan_stack(settings, ports_for(settings), LAYOUT, model_path="org/m", python="py",
                      cpu_count=4)  # fmt: skip
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in plan.named("replica-")] == ["0", "1"]
