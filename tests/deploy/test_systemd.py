"""systemd units and install.sh: staged with ``--destdir``, checked by systemd-analyze.

``systemd-analyze verify`` insists that ExecStart's binary exists. install.sh rewrites
the units' ``/opt/vkit/venv/bin/vkit`` to ``--vkit-bin``; the tests stage with a small
``vkit`` script that runs this interpreter's ``python -m vkit``, so what is verified is
exactly what install.sh would install (and install.sh really renders the NGINX site).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
PROFILE = ROOT / "configs" / "deployments" / "llama-3.1-8b-rtx4090.yaml"


@pytest.fixture(scope="module")
def vkit_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "vkit"
    path.write_text(f'#!/bin/sh\ncd "{ROOT}" && exec "{sys.executable}" -m vkit "$@"\n')
    path.chmod(0o755)
    return path


def install(destdir: Path, vkit_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(SYSTEMD / "install.sh"), "--destdir", str(destdir), "--vkit-bin", str(vkit_bin)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, vkit_bin: Path) -> Path:
    root = tmp_path_factory.mktemp("stage")
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    return root


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text())
    return parser


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, value
    return int(match.group(1))


def test_install_stages_units_profile_ports_and_secrets(staged: Path, vkit_bin: Path) -> None:
    etc = staged / "etc" / "vkit"
    assert (etc / "replica-0.env").read_text() == "VKIT_REPLICA_PORT=8001\n"
    assert (etc / "replica-1.env").read_text() == "VKIT_REPLICA_PORT=8002\n"
    assert (etc / "replica.yaml").read_text() == PROFILE.read_text()
    env = dict(re.findall(r"^(\w+)=(.*)$", (etc / "vkit.env").read_text(), re.M))
    assert len(env["VLLM_API_KEY"]) >= 32
    assert env["VKIT_GATEWAY_UPSTREAM_API_KEY"] == env["VLLM_API_KEY"]
    assert (etc / "vkit.env").stat().st_mode & 0o077 == 0o040  # group-readable only
    service = (staged / "etc/systemd/system/vllm@.service").read_text()
    assert f"ExecStart={vkit_bin} launch" in service


def test_gateway_env_files_are_what_the_gateway_reads(staged: Path) -> None:
    env: dict[str, str] = {}
    for name in ("vkit.env", "gateway.env"):  # the unit's EnvironmentFile= order
        text = (staged / "etc" / "vkit" / name).read_text()
        env.update(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.upstream_urls == ["http://127.0.0.1:8000"]  # the NGINX site's listen
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == env["VLLM_API_KEY"]


def test_install_is_idempotent_and_keeps_secrets(staged: Path, vkit_bin: Path) -> None:
    before = {p: p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    result = install(staged, vkit_bin, "--gpus", "0,1")
    assert result.returncode == 0, result.stderr
    after = {p: p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    assert after == before


def test_dry_run_writes_nothing(tmp_path: Path, vkit_bin: Path) -> None:
    result = install(tmp_path, vkit_bin, "--gpus", "0", "--profile", str(PROFILE), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ install" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--gpus", "0,x"], ["--bogus"], ["--gpus", "0"]])
def test_install_refuses_bad_arguments(tmp_path: Path, vkit_bin: Path, args: list[str]) -> None:
    """(The last case: no --profile on a first install.)"""
    result = install(tmp_path, vkit_bin, *args)
    assert result.returncode == 2
    assert "install.sh: error:" in result.stderr


def test_nginx_site_is_the_committed_example(staged: Path) -> None:
    site = staged / "etc/nginx/sites-available/vkit.conf"
    assert site.read_text() == (SYSTEMD / "nginx" / "vkit.conf").read_text()
    assert (staged / "etc/nginx/sites-enabled/vkit.conf").resolve() == site.resolve()


def test_replica_unit_drains_longer_than_vllm_and_pins_its_gpu() -> None:
    service = unit(SYSTEMD / "vllm@.service")["Service"]
    shutdown = yaml.safe_load(PROFILE.read_text())["shutdown_timeout"]
    assert seconds(service["TimeoutStopSec"]) > shutdown
    assert seconds(service["TimeoutStartSec"]) >= 600
    assert service["Restart"] == "always"
    assert service["KillMode"] == "mixed"  # one SIGTERM, to vkit launch, which forwards it
    assert "CUDA_VISIBLE_DEVICES=%i" in (SYSTEMD / "vllm@.service").read_text()
    assert service["User"] == "vkit"
    # `vkit launch` sends READY=1 and WATCHDOG=1 (launcher/supervision/sd_notify.py):
    # a hung engine restarts.
    assert service["Type"] == "notify"
    assert seconds(service["WatchdogSec"]) >= 30
    # Each of these would hide /dev/nvidia* or close the device policy to it.
    assert not {"PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy"} & set(service)


def systemd_verify(*units: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (Debian package: systemd)")
    return subprocess.run(
        [binary, "verify", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.services
@pytest.mark.parametrize("name", ["vllm@0.service", "vllm@3.service", "vkit-gateway.service"])
def test_systemd_analyze_verifies_the_installed_units(staged: Path, name: str) -> None:
    result = systemd_verify(staged / "etc/systemd/system" / name)
    # verify only warns (exit 0) about unknown keys or bad values: require silence too.
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.services
def test_systemd_analyze_flags_a_broken_unit(staged: Path, tmp_path: Path) -> None:
    """Guard for the test above: a misspelled key is reported."""
    text = (staged / "etc/systemd/system/vkit-gateway.service").read_text()
    broken = tmp_path / "vkit-gateway.service"
    broken.write_text(text.replace("Restart=always", "Restart=sometimes"))
    result = systemd_verify(broken)
    assert "sometimes" in result.stderr
