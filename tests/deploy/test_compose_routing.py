"""``vkit render compose --routing aware``: the gateway talks to the replicas itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from tests.deploy.test_compose import EXAMPLE, compose_config, filled_env
from vkit.cli import main


def render(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "compose.yaml"
    assert main([*EXAMPLE, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def aware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("aware"), "--routing", "aware")


def services(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return data


def test_the_aware_gateway_lists_every_replica_and_routes_by_load(aware: Path) -> None:
    gateway = services(aware)["gateway"]
    env = gateway["environment"]
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.routing == "aware"
    assert settings.upstream_urls == ["http://vllm-0:8000", "http://vllm-1:8000"]
    assert gateway["depends_on"] == {
        "vllm-0": {"condition": "service_started"},
        "vllm-1": {"condition": "service_started"},
        "redis": {"condition": "service_healthy"},
    }


def test_aware_leaves_nginx_out_of_the_bundle(aware: Path) -> None:
    assert "nginx" not in services(aware)
    assert not (aware.parent / "nginx" / "vkit.conf").exists()
    # The edge stays in front of the gateway, which faces clients in either routing.
    assert "edge" in services(aware)
    assert (aware.parent / "nginx" / "edge.conf").exists()
    assert (aware.parent / "prometheus" / "prometheus.yml").exists()


def test_tensor_parallel_replicas_are_the_upstreams(tmp_path: Path) -> None:
    args = [*EXAMPLE, "--routing", "aware", "--tp", "2"]
    args[args.index("--gpus") + 1] = "0,1,2,3"
    out = tmp_path / "compose.yaml"
    assert main([*args, "--out", str(out)]) == 0
    settings = gateway_settings(services(out)["gateway"]["environment"])
    assert settings.upstream_urls == ["http://vllm-0-1:8000", "http://vllm-2-3:8000"]


def test_the_header_records_the_routing(aware: Path, tmp_path: Path) -> None:
    first = aware.read_text().splitlines()[0]
    assert "--routing aware" in first
    default = render(tmp_path, "--routing", "round_robin")
    assert "--routing" not in default.read_text().splitlines()[0]
    assert gateway_settings(services(default)["gateway"]["environment"]).routing == "round_robin"
    assert "nginx" in services(default)


def test_an_unknown_routing_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*EXAMPLE, "--routing", "random"])
    assert exited.value.code == 2
    assert "--routing" in capsys.readouterr().err


@pytest.mark.integration
def test_docker_compose_accepts_the_aware_file(aware: Path, tmp_path: Path) -> None:
    result = compose_config(tmp_path, filled_env(), aware.read_text())
    assert result.returncode == 0, result.stderr
