"""``docker compose down`` on the rendered file: who stops when, and who waits how long.

Compose (v1's ``Project.stop``, v2's reverse dependency order alike) stops a service only once
every service that depends on it has stopped, and gives each ``stop_grace_period`` between
its stop signal and SIGKILL (10 s when unset). So the gateway stops first and must be given
longer than its own drain (uvicorn's graceful shutdown, ``timeouts.total``: a stream open
then may run that long), NGINX next, gracefully, then the replicas, each given longer than
vLLM's ``--shutdown-timeout``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.gateway_env import gateway_settings

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker"
MARGIN_S = 10  # what a process needs past its drain to close and exit


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    return dict(compose["services"])


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def grace(service: dict[str, Any]) -> int:
    return seconds(service.get("stop_grace_period", "10s"))


def down_waves(services: dict[str, dict[str, Any]]) -> list[set[str]]:
    """The order compose stops services in: each wave once its dependents are stopped."""
    running, waves = set(services), []
    while running:
        wave = {
            name
            for name in running
            if not any(name in services[other].get("depends_on", {}) for other in running)
        }
        assert wave, f"a dependency cycle among {running}"
        waves.append(wave)
        running -= wave
    return waves


def wave_of(waves: list[set[str]], name: str) -> int:
    return next(i for i, wave in enumerate(waves) if name in wave)


def replica_drain(service: dict[str, Any]) -> int:
    command = service["command"]
    return int(command[command.index("--shutdown-timeout") + 1])


def replicas(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in services.items() if k.startswith("vllm-")}


def test_down_stops_the_gateway_then_nginx_then_the_replicas(
    services: dict[str, dict[str, Any]],
) -> None:
    waves = down_waves(services)
    gateway, nginx = wave_of(waves, "gateway"), wave_of(waves, "nginx")
    assert gateway < nginx
    assert all(nginx < wave_of(waves, name) for name in replicas(services))


def test_the_gateway_is_given_longer_than_its_longest_response(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = services["gateway"]
    settings = gateway_settings(gateway["environment"])
    # vkit gateway: uvicorn's timeout_graceful_shutdown is timeouts.total (vkit/commands/gateway)
    drain = settings.timeouts.total
    assert gateway["environment"]["VKIT_GATEWAY_TIMEOUTS__TOTAL"] == f"{drain:g}"
    assert gateway.get("stop_signal", "SIGTERM") == "SIGTERM"  # uvicorn's graceful signal
    assert grace(gateway) >= drain + MARGIN_S
    assert all(grace(gateway) > replica_drain(r) for r in replicas(services).values())


def test_nginx_stops_gracefully_and_no_stream_through_it_outlives_the_gateway(
    services: dict[str, dict[str, Any]],
) -> None:
    nginx = services["nginx"]
    assert nginx["stop_signal"] == "SIGQUIT"  # SIGTERM is NGINX's fast (cutting) stop
    assert all(grace(nginx) > replica_drain(r) for r in replicas(services).values())
    site = (DOCKER_DIR / "nginx" / "vkit.conf").read_text()
    read_timeout = seconds(re.search(r"proxy_read_timeout (\d+s);", site).group(1))  # type: ignore[union-attr]
    total = gateway_settings(services["gateway"]["environment"]).timeouts.total
    assert read_timeout <= total


def test_each_replica_is_given_longer_than_vllms_drain(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in replicas(services).items():
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        assert service["init"] is True, name  # docker-init passes it on to the supervisor
        assert grace(service) >= replica_drain(service) + MARGIN_S, name


def test_the_arithmetic_check_can_fail(services: dict[str, dict[str, Any]]) -> None:
    cut = {**services, "gateway": {**services["gateway"], "stop_grace_period": "10s"}}
    with pytest.raises(AssertionError):
        test_the_gateway_is_given_longer_than_its_longest_response(cut)
    reordered = {
        **services,
        "nginx": {k: v for k, v in services["nginx"].items() if k != "depends_on"},
    }
    with pytest.raises(AssertionError):
        test_down_stops_the_gateway_then_nginx_then_the_replicas(reordered)
