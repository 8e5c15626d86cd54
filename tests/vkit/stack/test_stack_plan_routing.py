"""``vkit up --routing``: round-robin through NGINX, or the gateway's aware router on the
replicas themselves (no NGINX)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.deploy.gateway_env import unknown_gateway_variables
from vkit.cli import VkitArgumentParser
from vkit.commands.up import register, settings_from_args
from vkit.stack.preflight import missing_binaries
from vkit.stack.stack_plan import StackLayout, StackPlan, StackPorts, plan_stack
from vkit.stack.up_settings import UpSettings

PORTS = StackPorts(gateway=8000, nginx=9001, replicas=(9101, 9102), redis=None)


def plan(settings: UpSettings) -> StackPlan:
    layout = StackLayout(Path("run"))
    return plan_stack(settings, PORTS, layout, model_path="/m", python="/py", cpu_count=2)


def test_aware_routing_points_the_gateway_at_the_replicas_and_starts_no_nginx() -> None:
    aware = plan(UpSettings(routing="aware"))
    assert [s.name for s in aware.specs] == ["replica-0", "replica-1", "gateway"]
    env = aware.named("gateway")[0].env
    assert json.loads(env["VKIT_GATEWAY_UPSTREAMS"]) == [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9102",
    ]
    assert env["VKIT_GATEWAY_ROUTING"] == "aware"
    assert unknown_gateway_variables(env) == []
    assert (
        missing_binaries(UpSettings(routing="aware", nginx_bin="/no/nginx"), lambda b: None) == []
    )


def test_round_robin_stays_the_default_through_nginx() -> None:
    default = plan(UpSettings())
    assert "nginx" in [s.name for s in default.specs]
    env = default.named("gateway")[0].env
    assert json.loads(env["VKIT_GATEWAY_UPSTREAMS"]) == ["http://127.0.0.1:9001"]
    assert "VKIT_GATEWAY_ROUTING" not in env


def test_the_routing_flag_reaches_the_settings() -> None:
    parser = VkitArgumentParser(prog="vkit")
    register(parser.add_subparsers(dest="command"))
    assert settings_from_args(parser.parse_args(["up", "--routing", "aware"])).routing == "aware"
    assert settings_from_args(parser.parse_args(["up"])).routing == "round_robin"
