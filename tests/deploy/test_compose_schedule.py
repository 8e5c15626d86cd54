"""``vkit render compose --schedule``: a bundle that ``vkit schedule follow`` can drain.

The gateway routes to the replicas itself, reads them from ``replicas/replicas.txt`` (the
directory bind-mounted, so that a file replaced by a rename is seen), and holds requests
while none is ready; the follower refuses a bundle that was not rendered so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.bundle_check import bundle_problems
from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from tests.deploy.test_compose import EXAMPLE, compose_config, filled_env
from tests.deploy.test_compose_routing import render, services
from vkit.cli import main
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("scheduled"), "--schedule")


def test_the_gateway_reads_its_replicas_from_the_followers_file(scheduled: Path) -> None:
    gateway = services(scheduled)["gateway"]
    env = gateway["environment"]
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.routing == "aware"
    assert settings.discovery.file == Path("/etc/vkit/replicas/replicas.txt")
    assert settings.discovery.interval == 1.0
    assert settings.hold.max_wait == GATEWAY_TOTAL_TIMEOUT_S / 2
    assert "./replicas:/etc/vkit/replicas:ro" in gateway["volumes"]  # the directory
    listed = (scheduled.parent / "replicas" / "replicas.txt").read_text().split()
    assert listed == settings.upstream_urls == ["http://vllm-0:8000", "http://vllm-1:8000"]
    assert "nginx" not in services(scheduled)


def test_the_scheduled_bundle_is_complete(scheduled: Path) -> None:
    assert bundle_problems(scheduled.parent) == []
    assert "--schedule" in scheduled.read_text().splitlines()[0]


def test_without_a_schedule_nothing_of_it_is_rendered(tmp_path: Path) -> None:
    plain = render(tmp_path, "--routing", "aware")
    gateway = services(plain)["gateway"]
    assert gateway_settings(gateway["environment"]).discovery.file is None
    assert not any("replicas" in volume for volume in gateway["volumes"])
    assert not (tmp_path / "replicas").exists()


def test_a_schedule_through_nginx_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*EXAMPLE, "--schedule", "--routing", "round_robin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--schedule routes aware" in err


def test_the_follower_refuses_a_bundle_rendered_without_a_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = render(tmp_path, "--routing", "aware")
    week = tmp_path / "week.json"
    assert main(["capacity", "--users", "2000", "--tp", "1", "--schedule", "--schedule-out",
                 str(week)]) == 0  # fmt: skip
    capsys.readouterr()
    follow = ["schedule", "follow", str(week), "--compose-file", str(plain)]
    assert main([*follow, "--services", "vllm-0,vllm-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vkit render compose --schedule" in err


@pytest.mark.integration
def test_docker_compose_accepts_the_scheduled_file(scheduled: Path, tmp_path: Path) -> None:
    result = compose_config(tmp_path, filled_env(), scheduled.read_text())
    assert result.returncode == 0, result.stderr
