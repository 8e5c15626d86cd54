"""Which compose command the schedule follower runs (tier ``integration``: it runs the Docker
CLI's ``compose version``): ``docker compose`` where the CLI has the plugin, else the
stand-alone ``docker-compose``. The CLIs here are one-line scripts in a folder of their own,
standing for a Docker CLI with or without Compose v2."""

from __future__ import annotations

from pathlib import Path

import pytest

from vkit.stack.schedule_follower import compose_program

pytestmark = pytest.mark.integration


def tool(folder: Path, name: str, exit_code: int) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    script.chmod(0o755)


def test_the_plugin_is_used_where_the_docker_cli_has_it(tmp_path: Path) -> None:
    tool(tmp_path, "docker", 0)
    tool(tmp_path, "docker-compose", 0)
    assert compose_program(str(tmp_path)) == ["docker", "compose"]


def test_the_stand_alone_compose_is_used_where_the_plugin_is_missing(tmp_path: Path) -> None:
    tool(tmp_path, "docker", 1)  # `docker compose version`: "compose" is not a docker command
    tool(tmp_path, "docker-compose", 0)
    assert compose_program(str(tmp_path)) == ["docker-compose"]


def test_with_neither_the_plugins_name_is_kept_for_the_error(tmp_path: Path) -> None:
    tool(tmp_path, "docker", 1)
    assert compose_program(str(tmp_path)) == ["docker", "compose"]
