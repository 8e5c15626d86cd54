"""``vkit up``: the whole stack locally (CPU and the tiny model when no GPU is named)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vkit.stack.run import run_stack
from vkit.stack.up_settings import UpSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run N vLLM replicas + NGINX + the gateway locally (Ctrl-C stops all)",
        description="Start the whole stack and print the URL, a demo key and examples.",
    )
    parser.add_argument("--replicas", type=int, help="vLLM replicas (default 2)")
    parser.add_argument("--model", help="model name or directory (default: built-in tiny model)")
    parser.add_argument("--gpu", help="GPU name (default: CPU)")
    parser.add_argument("--served-model-name", help="name clients send as `model`")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--host", help="gateway bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gateway port (default 8000)")
    parser.add_argument("--redis", action="store_true", default=None, help="share limits via Redis")
    parser.add_argument(
        "--routing",
        choices=("round_robin", "aware"),
        help="round_robin (default): the gateway in front of NGINX; aware: the gateway routes "
        "to the replicas by load and prompt prefix, no NGINX",
    )
    parser.add_argument(
        "--edge",
        action=argparse.BooleanOptionalAction,
        help="NGINX in front of the gateway on --host:--port (timeouts, per-client limits, "
        "TLS); default: on unless --host is loopback",
    )
    parser.add_argument("--tls-cert", type=Path, help="the edge's certificate (PEM, chain first)")
    parser.add_argument(
        "--tls-key", type=Path, help="its key (default off loopback: a self-signed pair)"
    )
    parser.add_argument(
        "--deployment",
        type=Path,
        help="a deployment file: several models (and LoRA adapters), routed by model",
    )
    parser.add_argument(
        "--schedule",
        type=Path,
        metavar="FILE.json",
        help="a replica schedule (vkit capacity --schedule-out): replicas stopped and started "
        "by the hour, the gateway holding requests while none is ready",
    )
    parser.add_argument("--run-dir", type=Path, help="logs, configs, keys (default .vkit/run)")
    parser.add_argument("--nginx-bin", help="nginx binary (default: nginx on PATH)")
    parser.add_argument("--redis-bin", help="redis-server binary")
    parser.add_argument("--startup-timeout", type=float, dest="startup_timeout_s")
    parser.add_argument("--shutdown-timeout", type=float, dest="shutdown_timeout_s")
    parser.set_defaults(handler=handle_up)


def settings_from_args(args: argparse.Namespace) -> UpSettings:
    fields = UpSettings.model_fields
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if given.get("deployment") is not None or given.get("schedule") is not None:
        given.setdefault("routing", "aware")
    return UpSettings(**given)


def handle_up(args: argparse.Namespace) -> int:
    return run_stack(settings_from_args(args))
