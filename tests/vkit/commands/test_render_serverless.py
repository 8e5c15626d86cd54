"""``vkit render serverless``: the RunPod worker's settings from the fit every target uses,
and the gateway's spill-over settings that load back into the gateway."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from gateway.settings import load_settings
from launcher.sizing.capacity.options import ServerlessPlan
from launcher.sizing.capacity.recommend import serverless_command
from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.models import load_model
from vkit.cli import main
from vkit.deployment.model import container_group
from vkit.render.serverless_worker import (
    GATEWAY_ENV_FILE,
    LEFT_TO_THE_PLATFORM,
    WORKER_ENV_FILE,
    ServerlessRenderError,
    worker_env,
)

# The worker's own rule, inverted (docs/serverless.md): its aliases, else the variable is
# the flag in upper snake case; a boolean is the bare flag or --no-flag.
ALIASES = {"MODEL_NAME": "--model", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "--served-model-name"}
BOOLEANS = {"ENFORCE_EAGER", "ENABLE_PREFIX_CACHING"}


def worker_argv(env: dict[str, str]) -> list[str]:
    argv: list[str] = []
    for name, value in env.items():
        flag = ALIASES.get(name, "--" + name.lower().replace("_", "-"))
        if name in BOOLEANS:
            argv.append(flag if value == "true" else "--no-" + flag.removeprefix("--"))
        else:
            argv += [flag, value]
    return argv


def env_lines(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: value for name, value in pairs}


def test_the_worker_runs_the_groups_own_vllm_command(tmp_path: Path) -> None:
    argv = ["render", "serverless", "--model", "llama-3.1-8b", "--gpu", "h100", "--quant", "fp8"]
    assert main([*argv, "--endpoint-id", "abc123", "--out", str(tmp_path)]) == 0

    worker = env_lines((tmp_path / WORKER_ENV_FILE).read_text())
    assert worker["MODEL_NAME"] == "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8"
    assert worker["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "llama-3.1-8b"  # no mapping needed
    # what the worker will run is the kit's own command for that fit, less host and port
    plan = plan_fit(FitRequest(quant="fp8"), get_gpu("h100"), load_model("llama-3.1-8b"))
    group = container_group(
        model=worker["MODEL_NAME"],
        served_model="llama-3.1-8b",
        plan=plan,
        quant="fp8",
        shutdown_timeout_s=30,
    )
    kit = group.vllm_argv(engine=[])
    for flag in ("--host", "--port", "--shutdown-timeout", *sorted(LEFT_TO_THE_PLATFORM)):
        del kit[kit.index(flag) : kit.index(flag) + 2]
    assert worker_argv(worker) == kit
    # the queue caps and the priority policy are the kit's admission, not the worker's
    assert "MAX_NUM_QUEUED_REQS" not in worker and "SCHEDULING_POLICY" not in worker

    gateway_env = env_lines((tmp_path / GATEWAY_ENV_FILE).read_text())
    spill = load_settings(environ=gateway_env).spill  # the gateway's own loader
    assert spill.base_url == "https://api.runpod.ai/v2/abc123/openai"
    assert spill.name == "runpod" and spill.required and spill.models == {}


def test_worker_env_translates_every_flag_or_refuses_it() -> None:
    argv = ["--model", "org/m", "--host", "0.0.0.0", "--port", "8000", "--enforce-eager"]
    argv += ["--no-enable-prefix-caching", "--shutdown-timeout", "30"]
    assert worker_env(argv, concurrency=8) == {
        "MODEL_NAME": "org/m",
        "ENFORCE_EAGER": "true",
        "ENABLE_PREFIX_CACHING": "false",
        "MAX_CONCURRENCY": "8",
    }
    with pytest.raises(ServerlessRenderError, match="no setting for --speculative-config"):
        worker_env(["--model", "m", "--speculative-config", "{}"])


def test_a_model_that_does_not_fit_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["render", "serverless", "--model", "llama-3.1-70b", "--gpu", "rtx4090"]
    assert main([*argv, "--out", str(out)]) != 0
    error = capsys.readouterr().err.strip()
    assert "does not fit on NVIDIA GeForce RTX 4090" in error and "\n" not in error
    assert not out.exists()


def test_the_planners_serverless_pointer_is_a_command_that_renders() -> None:
    plan = ServerlessPlan(provider="runpod", worker="24 GB PRO", gpu_key="rtx4090", quant="awq")
    command = serverless_command("llama-3.1-8b", plan)
    assert command == "vkit render serverless --model llama-3.1-8b --gpu rtx4090 --quant awq"
    assert main(shlex.split(command)[1:]) == 0
