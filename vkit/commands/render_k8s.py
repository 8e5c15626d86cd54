"""``vkit render k8s``: a kustomize overlay (with the shared base) for a GPU cluster.

    vkit render k8s --gpu rtx4090 --model llama-3.1-8b --quant awq --out deploy/k8s
    vkit render k8s --gpu rtx4090 --model llama-3.1-8b --quant awq --autoscaler zero
    vkit render k8s --gpu cpu --model tiny-llama --context 256 --autoscaler none --no-monitoring
    vkit render k8s --deployment deploy/deployments/two-models.yaml --out deploy/k8s

Without ``--out`` it prints what ``kubectl kustomize deploy/k8s/overlays/<name>`` builds
(one YAML stream); with ``--out DIR`` it writes ``DIR/base``, ``DIR/components`` and
``DIR/overlays/<name>`` (:mod:`vkit.render.k8s_bundle`). The rules, the dashboard and the
tiny model's builder are read here, at render time. ``--deployment FILE`` renders a
deployment file's groups as ``overlays/<file name>`` (:mod:`vkit.render.k8s_groups`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import launcher.supervision.tiny_model as tiny_model
from launcher.supervision.amx_site import SITE_DIR as AMX_SITE_DIR
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.drain import GATEWAY_TOTAL_TIMEOUT_S
from vkit.deployment.group_fit import fit_groups
from vkit.exit_codes import UsageError
from vkit.render.bundle import write_files
from vkit.render.k8s_bundle import K8sBundle, Sources, dump_all, render_k8s_bundle
from vkit.render.k8s_groups import render_k8s_groups_bundle
from vkit.render.k8s_monitoring import DASHBOARD_FILE, RULES_FILE
from vkit.render.k8s_plan import K8sArgs, command_line, plan_k8s


def register(kinds: Any) -> None:
    k8s = kinds.add_parser("k8s", help="kustomize overlay for a GPU cluster (KEDA, Prometheus)")
    k8s.add_argument("--gpu", help="GPU type (configs/gpus.yaml), or cpu (required)")
    k8s.add_argument("--model", help="model name (configs/models) (required)")
    k8s.add_argument(
        "--deployment", type=Path, help="a deployment file of several groups, instead of one model"
    )
    k8s.add_argument("--quant", default="bf16", help="bf16, fp16, fp8, awq, gptq, int8")
    k8s.add_argument("--tp", type=int, default=1, help="tensor parallel: GPUs per replica")
    k8s.add_argument("--hf-model", help="checkpoint to serve (default: the catalog's)")
    target = k8s.add_mutually_exclusive_group()
    target.add_argument("--concurrency", type=int, help="fit for this many concurrent requests")
    target.add_argument("--context", type=int, help="fit for this max_model_len")
    k8s.add_argument(
        "--shutdown-timeout", type=int, default=GATEWAY_TOTAL_TIMEOUT_S,
        help="vLLM's drain on SIGTERM, seconds (default: the gateway's whole-request timeout)",
    )  # fmt: skip
    k8s.add_argument(
        "--autoscaler", default="keda", choices=["keda", "hpa", "zero", "none"],
        help="keda; hpa (prometheus-adapter); zero (KEDA down to no replica); none",
    )  # fmt: skip
    k8s.add_argument(
        "--routing", choices=["aware", "round_robin"],
        help="gateway routing over the discovered pods: aware (default; load and prefix), "
        "or round_robin",
    )  # fmt: skip
    k8s.add_argument("--min-replicas", type=int, help="default 1 (zero: 0)")
    k8s.add_argument("--max-replicas", type=int, default=4)
    k8s.add_argument("--scale-target", type=int, help="running requests per replica")
    k8s.add_argument("--prometheus-url", help="Prometheus for KEDA and the adapter")
    k8s.add_argument("--no-monitoring", action="store_true", help="no Prometheus-operator CRDs")
    k8s.add_argument(
        "--ledger", choices=["off", "sqlite", "postgres"],
        help="the usage ledger: off (default); sqlite (one gateway pod, a volume); postgres "
        "(the URL from Secret vkit-ledger, an image with the postgres extra)",
    )  # fmt: skip
    k8s.add_argument("--out", type=Path, help="kustomize root to write (deploy/k8s)")
    k8s.set_defaults(handler=run_k8s)


def read_sources() -> Sources:
    """The monitoring files (package data of vkit.monitoring) and the tiny model's builder."""
    return Sources(
        rules=RULES_FILE.read_text(),
        dashboard=DASHBOARD_FILE.read_text(),
        tiny_model=Path(tiny_model.__file__).read_text(),
        amx_site=(Path(AMX_SITE_DIR) / "sitecustomize.py").read_text(),
    )


def run_k8s(args: argparse.Namespace) -> int:
    if args.deployment is not None:
        return run_k8s_groups(args)
    missing = [f"--{name}" for name in ("gpu", "model") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    settings = K8sArgs.model_validate(
        {k: v for k, v in vars(args).items() if k in K8sArgs.model_fields and v is not None}
    )
    spec, plan, price = plan_k8s(settings)
    bundle = render_k8s_bundle(
        spec, plan, read_sources(), price_per_hour=price, command=command_line(settings)
    )
    return emit(bundle, settings.out)


def emit(bundle: K8sBundle, out: Path | None) -> int:
    """Without ``out``, what ``kubectl kustomize`` builds; else the tree written under it."""
    if out is None:
        sys.stdout.write(dump_all(bundle.objects))
        return 0
    for path in write_files(bundle.files, out):
        print(f"wrote {path}")
    return 0


def run_k8s_groups(args: argparse.Namespace) -> int:
    """``--deployment FILE``: every group fit first (nothing is written on an error)."""
    given = [
        f"--{n}" for n in ("gpu", "model", "hf_model", "concurrency", "context") if getattr(args, n)
    ]
    given += [
        f"--{n.replace('_', '-')}" for n in ("min_replicas", "scale_target") if getattr(args, n)
    ]
    given += ["--quant"] if args.quant != "bf16" else []
    given += ["--ledger"] if args.ledger not in (None, "off") else []
    given += ["--tp"] if args.tp != 1 else []
    if given:
        raise UsageError(f"--deployment states every group: drop {', '.join(given)}")
    file = load_deployment_file(args.deployment)
    fits = fit_groups(file, share=False)  # each pod is given whole GPUs
    name = args.deployment.stem
    command = shlex.join(["vkit", "render", "k8s", "--deployment", str(args.deployment)])
    bundle = render_k8s_groups_bundle(file, fits, read_sources(), name=name, command=command)
    return emit(bundle, args.out)
