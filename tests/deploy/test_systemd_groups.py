"""A systemd host of two models (a deployment file): install.sh staged with ``--deployment``,
the units checked by systemd-analyze, each instance's command and the gateway's env files
loaded back into the deployment they were rendered from."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vkit.render.groups_gateway as groups_gateway
from gateway.settings import load_settings
from launcher.supervision.profiles import LaunchEnvironment
from tests.deploy.gateway_env import unknown_gateway_variables
from tests.deploy.systemd_install import install, vkit_script
from tests.deploy.test_systemd import (
    NOBODY,
    env_file,
    etc_vkit,
    exec_start,
    needs_root,
    service_user,
    setpriv,
    systemd_verify,
    unit_environment,
    unprivileged_python,
)
from vkit.cli import build_parser, main
from vkit.commands.launch import settings_from
from vkit.commands.render_systemd import plan_groups_host
from vkit.deployment import Deployment

ROOT = Path(__file__).resolve().parents[2]
TWO_MODELS = ROOT / "deploy" / "deployments" / "two-models.yaml"
INSTALL_SH = ROOT / "deploy" / "systemd" / "install.sh"
# The fixtures the unprivileged-user test shares with the single-model tests.
__all__ = ["etc_vkit", "service_user", "unprivileged_python"]


@pytest.fixture(scope="module")
def staged_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vkit_bin = vkit_script(tmp_path_factory.mktemp("bin"))
    root = tmp_path_factory.mktemp("stage-groups")
    result = install(root, vkit_bin, "--deployment", str(TWO_MODELS))
    assert result.returncode == 0, result.stderr
    assert "next: systemctl enable --now vkit-gateway vllm@chat-0 vllm@fast-0\n" in result.stdout
    return root


def rendered(out: Path) -> Deployment:
    """The host's deployment as install.sh renders it (its arguments, defaults and all)."""
    args = build_parser().parse_args(
        ["render", "systemd", "--deployment", str(TWO_MODELS), "--out", str(out)]
    )
    return plan_groups_host(args)


@pytest.mark.system
def test_each_group_gets_its_instances_profiles_and_no_nginx_pool(staged_groups: Path) -> None:
    etc = staged_groups / "etc" / "vkit"
    assert sorted(p.name for p in etc.glob("replica-*")) == [
        "replica-chat-0.env", "replica-chat.yaml", "replica-fast-0.env", "replica-fast.yaml"
    ]  # fmt: skip
    assert not (etc / "replica.yaml").exists()
    # Both groups on GPU 0, each with its own port and profile; the runtime adapter switch
    # only where the group asks for it.
    assert env_file(etc / "replica-chat-0.env") == {
        "VKIT_REPLICA_PORT": "8001", "CUDA_VISIBLE_DEVICES": "0", "VKIT_TENSOR_PARALLEL": "1",
        "VKIT_REPLICA_PROFILE": "/etc/vkit/replica-chat.yaml",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }  # fmt: skip
    assert env_file(etc / "replica-fast-0.env") == {
        "VKIT_REPLICA_PORT": "8002", "CUDA_VISIBLE_DEVICES": "0", "VKIT_TENSOR_PARALLEL": "1",
        "VKIT_REPLICA_PROFILE": "/etc/vkit/replica-fast.yaml",
    }  # fmt: skip
    assert not (staged_groups / "etc/nginx/sites-available/vkit.conf").exists()
    for path in etc.glob("replica-*"):
        assert path.stat().st_mode & 0o777 == 0o640, path


@pytest.mark.system
def test_each_instance_launches_its_groups_settings_of_the_deployment(
    staged_groups: Path, tmp_path: Path
) -> None:
    """The static unit's ExecStart, its variables from the instance's env files and its
    profile the group's, parsed by ``vkit launch``'s own parser, is the replica's settings
    in the host's Deployment: served name, fit, memory share, LoRA."""
    deployment = rendered(tmp_path)
    assert [g.served_model for g in deployment.groups] == ["chat", "fast"]
    for group in deployment.groups:
        for index, gpu_set in enumerate(group.gpu_sets):
            instance = f"{group.served_model}-{gpu_set.name}"
            parsed = build_parser().parse_args(exec_start(staged_groups, instance)[1:])
            launched = settings_from(parsed, LaunchEnvironment(vllm_cpu_kvcache_space=None))
            assert launched == group.replica_launch(index)
    chat, fast = deployment.groups
    assert chat.launch.lora is not None and chat.launch.lora.runtime_updates
    assert [a.name for a in chat.launch.lora.adapters] == ["sql"]
    assert fast.launch.lora is None
    shares = [g.launch.gpu_memory_utilization for g in deployment.groups]
    assert all(share is not None for share in shares)
    assert sum(s for s in shares if s is not None) <= 0.92  # one GPU, split


@pytest.mark.system
def test_installed_gateway_env_loads_back_into_the_rendered_settings(
    staged_groups: Path, tmp_path: Path
) -> None:
    env = unit_environment(staged_groups, "vkit-gateway.service")
    assert unknown_gateway_variables(env) == []
    gateway_env = {
        name: value
        for name, value in env.items()
        if name.startswith("VKIT_GATEWAY_") and name != "VKIT_GATEWAY_UPSTREAM_API_KEY"
    }
    expected = rendered(tmp_path).gateway
    settings = load_settings(environ=gateway_env)
    assert settings.model_dump() == expected.model_dump()
    assert settings.routing == "aware"
    assert settings.upstream_urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert settings.health.expected_models == []  # each replica lists only its group's
    assert settings.tokenizers.models == {
        "chat": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "sql": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "fast": "Qwen/Qwen3-4B",
    }
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 9180)


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", ["vllm@chat-0.service", "vllm@fast-0.service", "vkit-gateway.service"]
)
def test_systemd_analyze_verifies_the_group_instances(staged_groups: Path, name: str) -> None:
    result = systemd_verify(staged_groups / "etc/systemd/system" / name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.system
@needs_root
def test_the_service_user_reads_its_groups_profile_as_install_sh_leaves_it(
    staged_groups: Path, etc_vkit: tuple[Path, int], service_user: tuple[int, int]
) -> None:
    """install.sh's own chgrp line (the service group, here an unused gid) on the staged
    /etc/vkit: the replicas' user, in that group only, runs the instance's ``vkit launch``
    on the group's profile; a user outside the group cannot read it."""
    directory, gid = etc_vkit
    for path in (staged_groups / "etc" / "vkit").glob("*"):
        if path.is_file():
            shutil.copy2(path, directory / path.name)
    (chgrp,) = re.findall(r"^\s*(chgrp vkit .*)$", INSTALL_SH.read_text(), re.M)
    script = chgrp.replace("chgrp vkit", f"chgrp {gid}").replace("$etc", "$1")
    subprocess.run(["bash", "-c", script, "chgrp", str(directory)], check=True, timeout=30)
    argv = [
        word.replace(f"{staged_groups}/etc/vkit", str(directory))
        for word in exec_start(staged_groups, "chat-0")
    ]
    # ExecStart's binary is the tests' vkit script: its arguments, run as the service user.
    # The unit's HF_HOME is the service user's; here one in the stand-in directory.
    env = {**os.environ, "HF_HOME": str(directory / "hf"), "HOME": str(directory)}
    as_service = subprocess.run(
        [*setpriv(*service_user), sys.executable, "-m", "vkit", *argv[1:], "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert as_service.returncode == 0, as_service.stderr
    assert "--served-model-name chat" in as_service.stdout
    assert "--lora-modules sql=org/llama-3.1-8b-sql-lora" in as_service.stdout
    outsider = subprocess.run(
        [*setpriv(NOBODY, NOBODY), "cat", str(directory / "replica-chat.yaml")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr


# --- Bad input: one line, exit 2, nothing written -------------------------------------------


def render(out: Path, deployment: Path, *extra: str) -> int:
    return main(["render", "systemd", "--deployment", str(deployment), "--out", str(out), *extra])


CPU_GROUP = """\
gpu: cpu
groups:
  - {model: tiny-llama, served_name: tiny, gpus: [0], context: 256}
"""
SAME_SLUG = """\
gpu: l40s
groups:
  - {model: qwen3-4b, served_name: Fast, gpus: [0], context: 2048}
  - {model: qwen3-4b, served_name: fast, gpus: [1], context: 2048}
"""


@pytest.mark.parametrize(
    ("text", "extra", "reason"),
    [
        (
            TWO_MODELS.read_text()
            .replace("gpu: l40s", "gpu: rtx4090")
            .replace("quant: awq", "quant: bf16"),
            [],
            "chat and fast cannot share one rtx4090",
        ),
        (CPU_GROUP, [], "systemd runs GPU replicas: group 'tiny' is on cpu"),
        (SAME_SLUG, [], "groups 'Fast' and 'fast' both make instances vllm@fast-*"),
        (TWO_MODELS.read_text(), ["--gpus", "0"], "drop --gpus"),
        (TWO_MODELS.read_text(), ["--routing", "round_robin"], "drop --routing round_robin"),
        (TWO_MODELS.read_text(), ["--base-port", "65535"], "are not all in 1-65535"),
        ("groups: []\n", [], "groups"),
    ],
)
def test_a_bad_deployment_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, extra: list[str], reason: str
) -> None:
    deployment = tmp_path / "models.yaml"
    deployment.write_text(text)
    out = tmp_path / "out"
    assert render(out, deployment, *extra) == 2
    assert not out.exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and reason in error[0], error


def test_the_single_model_path_still_requires_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "systemd", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["vkit render: error: the following arguments are required: --profile, --gpus"]
    assert not (tmp_path / "out").exists()


@pytest.mark.system
@pytest.mark.parametrize("mixed", [["--gpus", "0"], ["--profile", "x.yaml"], ["--tp", "2"]])
def test_install_refuses_single_model_options_with_a_deployment(
    tmp_path: Path, mixed: list[str]
) -> None:
    vkit_bin = vkit_script(tmp_path)
    stage = tmp_path / "stage"
    result = install(stage, vkit_bin, "--deployment", str(TWO_MODELS), *mixed)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: "), lines
    assert f"drop {mixed[0]}" in lines[0]
    assert not stage.exists()


def test_groups_gateway_module_examples() -> None:
    failures, tried = doctest.testmod(groups_gateway)
    assert tried > 0 and failures == 0


@pytest.mark.system
def test_a_single_model_host_moved_to_a_deployment_names_what_is_left_over(
    tmp_path: Path,
) -> None:
    """Re-installing with --deployment (twice: the second keeps gateway.env and passes it to
    the renderer) names the earlier single-model instance to disable, and changes nothing
    the second time."""
    vkit_bin = vkit_script(tmp_path)
    root = tmp_path / "root"
    profile = ROOT / "configs" / "deployments" / "llama-3.1-8b-rtx4090.yaml"
    first = install(root, vkit_bin, "--gpus", "0", "--profile", str(profile))
    assert first.returncode == 0, first.stderr
    moved = install(root, vkit_bin, "--deployment", str(TWO_MODELS))
    assert moved.returncode == 0, moved.stderr
    assert "systemctl disable --now vllm@0," in moved.stdout
    etc = root / "etc" / "vkit"
    before = {p.name: p.read_text() for p in etc.glob("*") if p.is_file()}
    again = install(root, vkit_bin, "--deployment", str(TWO_MODELS))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in etc.glob("*") if p.is_file()} == before
    assert "next: systemctl enable --now vkit-gateway vllm@chat-0 vllm@fast-0\n" in again.stdout
