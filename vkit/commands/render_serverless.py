"""``vkit render serverless``: a serverless vLLM endpoint for the planned model (RunPod's).

    vkit render serverless --model llama-3.1-8b --gpu h100 --quant fp8 --out DIR
    vkit render serverless --model llama-3.1-8b --gpu l40s --concurrency 16 --endpoint-id abc123

Solves the fit for one worker of that GPU class (the launcher's fit solver, as ``vkit render
compose`` does) and writes the worker's environment, in the RunPod vLLM worker's own names
(``runpod-worker.env``), and the gateway's spill-over settings pointing at the endpoint
(``gateway-spill.env``): :mod:`vkit.render.serverless_worker`, docs/serverless.md. Without
``--out`` both are printed. The checkpoint is the catalog's for the model and quantization, or
``--checkpoint`` (a Hugging Face repository id). A model that does not fit, or a flag the
worker has no setting for, is one line and a non-zero exit; nothing is written then.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from launcher.sizing.checkpoints import checkpoint_for
from launcher.sizing.fit import FitRequest, plan_fit
from launcher.sizing.gpus import get_gpu
from launcher.sizing.memory import Quantization
from launcher.sizing.models import load_model
from vkit.deployment.drain import REPLICA_DRAIN_S
from vkit.deployment.model import container_group
from vkit.exit_codes import CliError, UsageError
from vkit.render.bundle import write_files
from vkit.render.serverless_worker import ServerlessRenderError, serverless_files


class ServerlessArgs(BaseModel):
    """``vkit render serverless`` arguments, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    gpu: str
    quant: Quantization = "bf16"
    tp: int = Field(default=1, ge=1, le=8)
    concurrency: int | None = Field(default=None, ge=1)
    context: int | None = Field(default=None, ge=16)
    checkpoint: str | None = Field(default=None, pattern=r"^[\w.-]+/[\w.-]+$")
    endpoint_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]+$")
    out: Path | None = None


def register(kinds: Any) -> None:
    parser = kinds.add_parser(
        "serverless",
        help="a serverless vLLM endpoint (RunPod) and the gateway's spill-over settings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model name (configs/models)")
    parser.add_argument("--gpu", required=True, help="the worker's GPU class, e.g. h100, l40s")
    parser.add_argument("--quant", default="bf16", help="bf16, fp8, awq, gptq, int8")
    parser.add_argument("--tp", type=int, default=1, help="GPUs per worker (default 1)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--concurrency", type=int, help="requests one worker takes at once")
    target.add_argument("--context", type=int, help="target max_model_len")
    parser.add_argument("--checkpoint", help="the Hugging Face repository to serve")
    parser.add_argument("--endpoint-id", help="the RunPod endpoint's id, once created")
    parser.add_argument("--out", type=Path, help="directory to write both files into")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in ServerlessArgs.model_fields}
    try:
        settings = ServerlessArgs.model_validate({k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UsageError(_first_error(exc)) from None
    model = load_model(settings.model)
    gpu = get_gpu(settings.gpu)
    request = FitRequest(
        quant=settings.quant,
        concurrency=settings.concurrency,
        context=settings.context,
        tensor_parallel=settings.tp,
    )
    plan = plan_fit(request, gpu, model)
    if not plan.fits:
        raise CliError(f"{model.name} does not fit on {gpu.name}: {'; '.join(plan.problems)}")
    group = container_group(
        model=_checkpoint(settings, model.name),
        served_model=model.name,
        plan=plan,
        quant=plan.quant,
        shutdown_timeout_s=REPLICA_DRAIN_S,
    )
    try:
        files = serverless_files(
            group,
            gpu_name=gpu.name,
            endpoint_id=settings.endpoint_id,
            command=_command(settings),
            concurrency=settings.concurrency,
        )
    except ServerlessRenderError as exc:
        raise CliError(str(exc)) from None
    if settings.out is None:
        for name, text in files.items():
            sys.stdout.write(f"# ---- {name}\n{text}")
        return 0
    settings.out.mkdir(parents=True, exist_ok=True)
    write_files(files, settings.out)
    for name in files:
        print(settings.out / name)
    return 0


def _checkpoint(settings: ServerlessArgs, model: str) -> str:
    """The Hugging Face repository the worker downloads (``MODEL_NAME``)."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    found = checkpoint_for(settings.model, settings.quant)
    if found is not None:
        return found.repo
    if "/" in settings.model:
        return settings.model
    raise UsageError(
        f"no known Hugging Face checkpoint of {model} at {settings.quant}: pass --checkpoint REPO"
    )


def _command(settings: ServerlessArgs) -> str:
    """The command line that renders these files again."""
    words = ["vkit", "render", "serverless", "--model", settings.model, "--gpu", settings.gpu]
    for flag, value in (
        ("--quant", settings.quant if settings.quant != "bf16" else None),
        ("--tp", settings.tp if settings.tp != 1 else None),
        ("--concurrency", settings.concurrency),
        ("--context", settings.context),
        ("--checkpoint", settings.checkpoint),
        ("--endpoint-id", settings.endpoint_id),
    ):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"]).replace("_", "-")
        return f"--{where}: {first['msg']}"
    return str(exc)
