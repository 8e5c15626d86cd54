"""``vkit render``: write deploy files for a given box.

    vkit render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b --quant awq \\
        --concurrency 16 --out deploy/docker/compose.yaml
    vkit render compose --gpu cpu --gpus 0 --model tiny-llama --context 256 --out DIR/compose.yaml
    vkit render compose --deployment models.yaml --out DIR/compose.yaml
    vkit render nginx --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 \\
        --listen 127.0.0.1:8000 --site --out /etc/nginx/sites-available/vkit.conf

``render compose`` solves the fit for one GPU of that type (the launcher's fit solver)
and writes the compose file; with ``--out`` it also writes, beside it, everything the
compose file mounts or builds (:mod:`vkit.render.bundle`: a self-contained bundle) and,
when there is none, a ``.env`` (mode 0600: this user's group id for the keys file, fresh
secrets; an existing ``.env`` is never touched). Without ``--out`` it prints the compose
file only. ``--deployment FILE`` renders a deployment file's groups instead of one ``--model``
(docs/deployment-file.md; :mod:`vkit.render.compose_groups`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from launcher.sizing.checkpoints import served_checkpoint
from launcher.sizing.fit import CpuTarget, FitRequest, plan_fit
from launcher.sizing.gpu_sets import split_gpu_sets
from launcher.sizing.gpus import get_gpu, normalize_gpu_name
from launcher.sizing.memory import Quantization
from launcher.sizing.models import load_model
from vkit.commands import render_k8s, render_serverless, render_systemd
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.drain import REPLICA_DRAIN_S
from vkit.deployment.group_fit import fit_groups
from vkit.exit_codes import CliError, UsageError
from vkit.nginx_conf import ProxyTuning, render_nginx_conf, render_nginx_site
from vkit.render.bundle import (
    COMPOSE_FILE,
    COPIED_SOURCES,
    ENV_EXAMPLE_FILE,
    ENV_FILE,
    render_compose_bundle,
    write_atomic,
    write_bundle,
)
from vkit.render.compose import ComposeSpec
from vkit.render.compose_cpu import CPU, CPU_KV_CACHE_GIB, is_cpu
from vkit.render.compose_env import first_env
from vkit.render.compose_groups import render_groups_bundle


class ComposeArgs(BaseModel):
    """``vkit render compose`` arguments, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str
    gpus: list[str] = Field(min_length=1)
    tp: int = Field(default=1, ge=1)
    model: str
    quant: Quantization = "bf16"
    concurrency: int | None = Field(default=None, ge=1)
    context: int | None = Field(default=None, ge=16)
    shutdown_timeout: int = Field(default=REPLICA_DRAIN_S, ge=1)
    routing: Literal["round_robin", "aware"] = "round_robin"
    schedule: bool = False
    out: Path | None = None

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            ids = [part.strip() for part in value.split(",")]
            if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
                raise ValueError("expected distinct GPU indexes like 0,1")
            return ids
        return value


class NginxArgs(BaseModel):
    """``vkit render nginx`` arguments, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: list[str] = Field(min_length=1)
    listen: str
    site: bool = False
    workers: int = Field(default=1, ge=1)
    read_timeout: int = Field(default=600, ge=1)
    out: Path | None = None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("render", help="write deploy files (compose, NGINX)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    compose = kinds.add_parser("compose", help="docker compose bundle for a GPU box")
    compose.add_argument("--gpu", help="GPU type, e.g. rtx4090, or cpu (required)")
    compose.add_argument(
        "--gpus", help="GPU indexes (nvidia-smi's): 0,1; with --gpu cpu: cores (required)"
    )
    compose.add_argument("--tp", type=int, help="tensor parallel: GPUs per replica (default 1)")
    compose.add_argument("--model", help="model name (configs/models) (required)")
    compose.add_argument(
        "--deployment", type=Path, help="a deployment file of several groups, instead of the above"
    )
    compose.add_argument("--quant", default="bf16", help="bf16, fp8, awq, gptq, int8")
    target = compose.add_mutually_exclusive_group()
    target.add_argument("--concurrency", type=int, help="target concurrent requests")
    target.add_argument("--context", type=int, help="target max_model_len")
    compose.add_argument(
        "--shutdown-timeout", type=int, default=REPLICA_DRAIN_S, help="drain seconds"
    )
    compose.add_argument(
        "--routing",
        choices=["round_robin", "aware"],
        help="gateway routing: round_robin via NGINX (default), or aware (replicas direct)",
    )
    compose.add_argument(
        "--schedule",
        action="store_true",
        help="for `vkit schedule follow`: routing aware, the replicas from replicas/replicas.txt",
    )
    compose.add_argument(
        "--out", type=Path, help="compose file to write; its directory gets the whole bundle"
    )
    compose.set_defaults(handler=run_compose)

    nginx = kinds.add_parser("nginx", help="NGINX config over vLLM replicas")
    nginx.add_argument("--upstream", action="append", required=True, help="host:port (repeat)")
    nginx.add_argument("--listen", required=True, help="PORT or HOST:PORT")
    nginx.add_argument("--site", action="store_true", help="site file (http context) only")
    nginx.add_argument("--workers", type=int, default=1)
    nginx.add_argument("--read-timeout", type=int, default=600, help="seconds")
    nginx.add_argument("--out", type=Path, help="file to write (default: stdout)")
    nginx.set_defaults(handler=run_nginx)

    render_systemd.register(kinds)
    render_k8s.register(kinds)
    render_serverless.register(kinds)


def run_compose(args: argparse.Namespace) -> int:
    if args.deployment is not None:
        return run_compose_groups(args)
    missing = [f"--{name}" for name in ("gpu", "gpus", "model") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    if args.schedule and args.routing == "round_robin":
        raise UsageError("--schedule routes aware (the gateway drops each replica it stops)")
    if args.schedule:
        args.routing = "aware"
    settings = ComposeArgs.model_validate(
        {k: v for k, v in vars(args).items() if k in ComposeArgs.model_fields and v is not None}
    )
    split_gpu_sets(settings.gpus, tensor_parallel=settings.tp)  # a bad split: exit 2 first
    model = load_model(settings.model)
    request = FitRequest(
        quant=settings.quant,
        concurrency=settings.concurrency,
        context=settings.context,
        tensor_parallel=settings.tp,
    )
    if is_cpu(settings.gpu):  # --gpus are CPU cores; the model is built or downloaded there
        if settings.tp != 1:
            raise UsageError("--gpu cpu runs one replica per core: --tp must be 1")
        plan = plan_fit(request, CpuTarget(kv_cache_space_gib=CPU_KV_CACHE_GIB), model)
        gpu_key, gpu_name, price = CPU, "the CPU engine", None
    else:
        gpu = get_gpu(settings.gpu)
        served_checkpoint(settings.model, settings.quant)  # none known: how to make one, exit 2
        plan = plan_fit(request, gpu, model)
        gpu_key, gpu_name, price = normalize_gpu_name(settings.gpu), gpu.name, gpu.price_per_hour
    if not plan.fits:
        raise CliError(f"{model.name} does not fit on {gpu_name}: {'; '.join(plan.problems)}")
    spec = ComposeSpec(
        gpu=gpu_key,
        gpu_ids=settings.gpus,
        tensor_parallel=settings.tp,
        model=model.name,
        shutdown_timeout_s=settings.shutdown_timeout,
        routing=settings.routing,
        schedule=settings.schedule,
    )
    files = render_compose_bundle(spec, plan, price_per_hour=price, command=_command_line(args))
    if settings.out is None:
        sys.stdout.write(files[COMPOSE_FILE])
        return 0
    write_compose_bundle(files, settings.out)
    return 0


def run_compose_groups(args: argparse.Namespace) -> int:
    """``--deployment FILE``: every group fit first (nothing is written on an error)."""
    given = [f"--{name}" for name in ("gpu", "gpus", "model", "tp") if getattr(args, name)]
    given += [
        f"--{n}" for n in ("concurrency", "context", "routing", "schedule") if getattr(args, n)
    ]
    given += ["--quant"] if args.quant != "bf16" else []
    if given:
        raise UsageError(f"--deployment states every group: drop {', '.join(given)}")
    file = load_deployment_file(args.deployment)
    fits = fit_groups(file)
    command = shlex.join(["vkit", "render", "compose", "--deployment", str(args.deployment)])
    files = render_groups_bundle(file, fits, command)
    for fit in fits:
        share = f", shares its GPUs with {', '.join(fit.shared_with)}" if fit.shared_with else ""
        plan = fit.plan
        memory = f", gpu_memory_utilization {plan.gpu_memory_utilization}" if not fit.cpu else ""
        print(f"{fit.name}: {plan.model} on {plan.target}, max_model_len {plan.max_model_len}"
              f"{memory}{share}", file=sys.stderr)  # fmt: skip
    if args.out is None:
        sys.stdout.write(files[COMPOSE_FILE])
        return 0
    write_compose_bundle(files, args.out)
    return 0


def write_compose_bundle(files: dict[str, str], out: Path) -> None:
    """The bundle beside ``out`` (the compose file), and a first ``.env`` unless one is there."""
    files = {**files}
    files[out.name] = files.pop(COMPOSE_FILE)
    sources = 0
    for path in write_bundle(files, out.parent):
        if path.is_relative_to(out.parent / COPIED_SOURCES):
            sources += 1
        else:
            print(f"wrote {path}")
    print(f"wrote {sources} files of the kit under {out.parent / COPIED_SOURCES}")
    env = out.parent / ENV_FILE
    if write_atomic(
        env, first_env(files[ENV_EXAMPLE_FILE], first_values()), mode=0o600, replace=False
    ):
        print(f"wrote {env} (secrets generated; fill in the empty REQUIRED values)")
    else:
        print(f"kept {env} (compare with {ENV_EXAMPLE_FILE} for new variables)")


def first_values() -> dict[str, str]:
    """What a first ``.env`` holds beyond ``.env.example``: the keys file's group (this
    user's) and fresh secrets."""
    return {
        "VKIT_KEYS_GID": str(os.getgid()),
        "VLLM_API_KEY": secrets.token_urlsafe(32),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(18),
    }


def run_nginx(args: argparse.Namespace) -> int:
    settings = NginxArgs.model_validate(
        {k: v for k, v in vars(args).items() if k in NginxArgs.model_fields}
    )
    tuning = ProxyTuning(read_timeout_s=settings.read_timeout)
    try:
        if settings.site:
            text = render_nginx_site(settings.upstream, settings.listen, tuning=tuning)
        else:
            text = render_nginx_conf(
                settings.upstream,
                settings.listen,
                tuning=tuning,
                worker_processes=settings.workers,
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if settings.out is None:
        sys.stdout.write(text)
    else:
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(settings.out, text)
        print(f"wrote {settings.out}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this render (recorded in the files' header)."""
    parts = ["vkit", "render", "compose", "--gpu", args.gpu, "--gpus", args.gpus]
    if args.tp not in (None, 1):
        parts += ["--tp", str(args.tp)]
    parts += ["--model", args.model]
    if args.quant != "bf16":
        parts += ["--quant", args.quant]
    for flag in ("concurrency", "context"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.shutdown_timeout != REPLICA_DRAIN_S:
        parts += ["--shutdown-timeout", str(args.shutdown_timeout)]
    if args.schedule:
        parts += ["--schedule"]
    elif args.routing not in (None, "round_robin"):
        parts += ["--routing", args.routing]
    return shlex.join(parts)
