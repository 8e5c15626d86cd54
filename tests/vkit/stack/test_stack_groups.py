"""vkit up --deployment: each group's replicas run its settings on their own ports, the
gateway routes aware to all of them, and bad input stops before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings
from launcher.sizing.lora import RUNTIME_LORA_VAR, lora_flags
from launcher.supervision.profiles import LaunchEnvironment
from vkit.cli import build_parser
from vkit.commands.launch import settings_from
from vkit.commands.up import settings_from_args
from vkit.deployment.deployment_file import parse_deployment
from vkit.deployment.group_fit import fit_groups
from vkit.stack.stack_groups import groups_stack_deployment, plan_groups_stack, served_names
from vkit.stack.stack_plan import StackLayout, StackPorts
from vkit.stack.up_settings import UpSettings

LAYOUT = StackLayout(Path("/run/vkit"))
FILE: dict[str, Any] = {
    "gpu": "cpu",
    "groups": [
        {
            "model": "tiny-llama",
            "served_name": "tiny",
            "replicas": 2,
            "context": 256,
            "adapters": [{"name": "tiny-sql", "source": "/run/lora/sql", "rank": 8}],
            "lora": {"runtime_updates": True},
        },
        {"model": "tiny-llama", "served_name": "tiny-two", "context": 128},
    ],
}
PATHS = {"tiny": "/run/vkit/tiny-llama", "tiny-two": "/run/models/tiny-two"}


def ports() -> StackPorts:
    return StackPorts(gateway=8000, nginx=8100, replicas=(8101, 8102, 8103), gateway_admin=9190)


def settings() -> UpSettings:
    return UpSettings(deployment=Path("f.yaml"), routing="aware")


def test_each_replica_runs_its_groups_settings_and_the_gateway_routes_to_all() -> None:
    fits = fit_groups(parse_deployment(FILE))
    deployment = groups_stack_deployment(settings(), fits, ports(), LAYOUT, model_paths=PATHS)
    plan = plan_groups_stack(
        settings(), fits, ports(), LAYOUT, model_paths=PATHS, python="py", cpu_count=4
    )
    assert [spec.name for spec in plan.specs] == ["replica-0", "replica-1", "replica-2", "gateway"]
    replicas = plan.named("replica-")
    launched = []
    for spec in replicas:
        args = build_parser().parse_args(list(spec.argv[3:]))
        launched.append(settings_from(args, LaunchEnvironment(vllm_cpu_kvcache_space=None)))
    tiny = deployment.groups[0]
    assert [s.port for s in launched] == [8101, 8102, 8103]
    assert [s.served_model_name for s in launched] == ["tiny", "tiny", "tiny-two"]
    assert launched[2].model == "/run/models/tiny-two" and launched[2].max_model_len == 128
    assert tiny.launch.lora is not None
    assert launched[0].extra_args == tuple(lora_flags(tiny.launch.lora))
    assert launched[2].extra_args == ()
    assert replicas[0].env[RUNTIME_LORA_VAR] == "True"
    assert RUNTIME_LORA_VAR not in replicas[2].env
    assert [spec.env["VLLM_CPU_OMP_THREADS_BIND"] for spec in replicas] == ["0", "1", "2"]
    gateway_env = {k: v for k, v in plan.named("gateway")[0].env.items() if "GATEWAY" in k}
    gateway = load_settings(environ=gateway_env)
    assert gateway.model_dump() == deployment.gateway.model_dump()
    assert gateway.routing == "aware"
    assert gateway.health.expected_models == []  # each replica serves its group only
    assert [str(url) for url in gateway.upstreams] == [
        f"http://127.0.0.1:{p}/" for p in (8101, 8102, 8103)
    ]
    assert served_names(fits) == []  # adapters loaded at run time: every model
    fixed = parse_deployment(
        {**FILE, "groups": [{**FILE["groups"][0], "lora": {}}, FILE["groups"][1]]}
    )
    assert served_names(fit_groups(fixed)) == ["tiny", "tiny-sql", "tiny-two"]


def test_the_deployment_replaces_the_single_model_flags() -> None:
    with pytest.raises(ValidationError, match="--deployment states every group: drop --model"):
        UpSettings(deployment=Path("f.yaml"), routing="aware", model="m")
    with pytest.raises(ValidationError, match="routes aware"):
        UpSettings(deployment=Path("f.yaml"))
    args = build_parser().parse_args(["up", "--deployment", "f.yaml"])
    assert settings_from_args(args).routing == "aware"


def test_ports_must_match_the_replicas() -> None:
    fits = fit_groups(parse_deployment(FILE))
    short = StackPorts(gateway=8000, nginx=8100, replicas=(8101,))
    with pytest.raises(ValueError, match="1 replica ports for 3 replicas"):
        groups_stack_deployment(settings(), fits, short, LAYOUT, model_paths=PATHS)
