"""``vkit schedule``: follow a replica schedule, or render it for a cluster or a host.

    vkit capacity --users 100000 --schedule --weekend-share 0 --allow-zero --schedule-out week.json
    vkit schedule follow week.json --compose-file compose.yaml --services vllm-0,vllm-1
      (a bundle from `vkit render compose --schedule`: its gateway reads replicas/replicas.txt)
    vkit schedule keda week.json --overlay ../k8s/overlays/rtx4090-llama-3.1-8b-awq-zero --out DIR
    vkit schedule systemd week.json --units vllm@0.service,vllm@1.service --out DIR

The schedule file is checked when read (an hour below its need is refused, exit 2), and so is
its fit to what will follow it: a peak above the services or units given is refused too.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from launcher.sizing.capacity.schedule import ReplicaSchedule
from vkit.commands.capacity_schedule import load_schedule
from vkit.deployment.service_ports import replica_url
from vkit.exit_codes import UsageError
from vkit.render.compose_schedule import DRAIN_SETTLE_S, REPLICAS_FILE
from vkit.render.schedule_keda import keda_schedule_kustomization, keda_schedule_patch
from vkit.render.schedule_systemd import schedule_units
from vkit.stack.schedule_follower import ComposeReplicas, compose_program, follow, follower_for

PATCH_FILE = "schedule-patch.yaml"
HEADER = "# Rendered by `vkit schedule keda`; re-render, do not edit.\n"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="follow a replica schedule (compose), or render it (KEDA cron, systemd timers)",
        description="Scale replicas by the hour from `vkit capacity --schedule-out FILE`.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    follow_parser = actions.add_parser("follow", help="start and stop compose's vLLM services")
    follow_parser.add_argument("file", type=Path)
    follow_parser.add_argument("--compose-file", type=Path, required=True)
    follow_parser.add_argument("--services", required=True, metavar="LIST", help="vllm-0,vllm-1")
    follow_parser.add_argument("--poll", type=float, default=30.0, metavar="S")
    follow_parser.add_argument("--project-name", "-p", metavar="NAME", help="compose project")
    keda = actions.add_parser("keda", help="a kustomization adding KEDA cron triggers")
    keda.add_argument("file", type=Path)
    keda.add_argument("--overlay", required=True, help="the overlay it builds on (a path)")
    keda.add_argument("--out", type=Path, required=True, metavar="DIR")
    systemd = actions.add_parser("systemd", help="timers that start and stop vllm@ units")
    systemd.add_argument("file", type=Path)
    systemd.add_argument("--units", required=True, metavar="LIST", help="vllm@0.service,...")
    systemd.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.set_defaults(handler=run)


def names(text: str, flag: str) -> list[str]:
    found = [name.strip() for name in text.split(",") if name.strip()]
    if not found:
        raise UsageError(f"{flag}: give at least one name")
    return found


def enough(schedule: ReplicaSchedule, replicas: list[str], flag: str) -> None:
    if schedule.peak_replicas > len(replicas):
        raise UsageError(
            f"{flag}: the schedule's peak needs {schedule.peak_replicas} replicas, "
            f"{len(replicas)} given ({','.join(replicas)})"
        )


def write_keda(schedule: ReplicaSchedule, overlay: str, out: Path) -> list[Path]:
    kustomization = keda_schedule_kustomization(overlay, PATCH_FILE)
    files = {
        out / "kustomization.yaml": kustomization,
        out / PATCH_FILE: keda_schedule_patch(schedule),
    }
    out.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        path.write_text(HEADER + yaml.safe_dump(data, sort_keys=False, width=100))
    return list(files)


def write_systemd(schedule: ReplicaSchedule, units: list[str], out: Path) -> list[Path]:
    files = schedule_units(schedule, units)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def run(args: argparse.Namespace) -> int:
    schedule = load_schedule(args.file)
    if args.action == "keda":
        written = write_keda(schedule, args.overlay, args.out)
    elif args.action == "systemd":
        units = names(args.units, "--units")
        enough(schedule, units, "--units")
        written = write_systemd(schedule, units, args.out)
    else:
        services = names(args.services, "--services")
        enough(schedule, services, "--services")
        stop = threading.Event()
        replicas_file = args.compose_file.parent / REPLICAS_FILE
        if not replicas_file.is_file():
            raise UsageError(
                f"{replicas_file} not found: render the bundle with `vkit render compose "
                "--schedule` (its gateway drops a replica before the follower stops it)"
            )
        replicas = ComposeReplicas(
            args.compose_file,
            services,
            project=args.project_name,
            replicas_file=replicas_file,
            urls=replica_url,
            settle_s=DRAIN_SETTLE_S,
            program=compose_program(),
        )
        try:
            follow(follower_for(schedule), replicas, stop, args.poll)
        except KeyboardInterrupt:
            stop.set()
        return 0
    for path in written:
        print(path, file=sys.stderr)
    return 0
