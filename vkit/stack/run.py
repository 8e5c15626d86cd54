"""``run_stack``: the shell around the pure plan. Starts, watches and stops the stack.

Order: preflight (binaries, ports) -> run directory (logs, nginx.conf, a fresh keys
file with one demo key, the tiny model) -> start everything -> wait, with progress,
until the replicas, NGINX, Redis and then the gateway are ready -> banner -> watch
until Ctrl-C/SIGTERM or a fatal exit (a crashed replica is restarted, with backoff, see
:mod:`vkit.stack.restarts`) -> stop everything, front door first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from launcher.sizing.capacity.schedule import read_schedule
from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.group_fit import GroupFit, fit_groups
from vkit.edge_cert import CertificateError, ensure_certificate
from vkit.exit_codes import CliError
from vkit.stack.banner import render_banner
from vkit.stack.demo_key import add_demo_key
from vkit.stack.ports import pick_free_ports
from vkit.stack.preflight import check_binaries, check_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.restarts import ReplicaKeeper, RestartPolicy
from vkit.stack.schedule_follower import ScheduleFollower, follower_for, write_replicas_file
from vkit.stack.stack_groups import plan_groups_stack, served_names
from vkit.stack.stack_plan import (
    LOOPBACK,
    REPLICAS_FILE_INTERVAL_S,
    StackLayout,
    StackPlan,
    StackPorts,
    plan_stack,
)
from vkit.stack.up_settings import UpSettings

Say = Callable[[str], None]
DEMO_KEY_NAME = "demo"


def _say(text: str) -> None:
    print(text, flush=True)


def run_stack(settings: UpSettings, *, say: Say = _say, python: str = sys.executable) -> int:
    fits: list[GroupFit] = []
    if settings.deployment is not None:  # every group fit before anything starts
        fits = fit_groups(load_deployment_file(settings.deployment))
        replicas = sum(len(fit.gpu_sets) for fit in fits)
        settings = settings.model_copy(update={"replicas": replicas})
    follower = schedule_follower(settings)
    check_binaries(settings)
    ports = resolve_ports(settings)
    layout = StackLayout(settings.run_dir)
    prepare_run_dir(layout)
    cpus = os.cpu_count() or 1
    if fits:
        paths = group_model_paths(fits, layout, say)
        plan = plan_groups_stack(
            settings, fits, ports, layout, model_paths=paths, python=python, cpu_count=cpus
        )
        models = served_names(fits)
    else:
        model_path = resolve_model(settings, layout, say)
        plan = plan_stack(
            settings, ports, layout, model_path=model_path, python=python, cpu_count=cpus
        )
        models = [plan.model_name]
    layout.nginx_conf.write_text(plan.nginx_conf)
    scheduled = None
    if follower is not None:
        urls = tuple(f"http://{LOOPBACK}:{port}" for port in ports.replicas)
        write_replicas_file(layout.replicas_file, urls)
        scheduled = ScheduledReplicas(follower, urls, layout.replicas_file)
    if plan.edge_conf is not None:
        prepare_edge(settings, layout, say)
        layout.edge_conf.write_text(plan.edge_conf)
    secret = add_demo_key(layout.keys_file, DEMO_KEY_NAME, settings.demo_key, models)
    group = ProcessGroup()
    try:
        with _sigterm_as_interrupt():
            start_and_wait(group, plan, settings, say)
            restarts = RestartPolicy()
            say(
                render_banner(
                    plan.gateway_url,
                    secret,
                    plan.model_name,
                    settings.replicas,
                    restarts,
                    admin_url=(
                        f"http://127.0.0.1:{ports.gateway_admin}" if ports.gateway_admin else None
                    ),
                    front="NGINX" if settings.routing == "round_robin" else "the aware router",
                )
                + edge_note(settings, layout)
            )
            watch(
                group,
                say,
                policy=restarts,
                scheduled=scheduled,
                stop_grace_s=settings.shutdown_timeout_s + 5,
            )
    except KeyboardInterrupt:
        say("vkit up: stopping (draining requests in flight) ...")
        return 0
    finally:
        with _signals_ignored():
            group.stop_all(grace_s=settings.shutdown_timeout_s + 5)
        say("vkit up: everything stopped")


def schedule_follower(settings: UpSettings) -> ScheduleFollower | None:
    """The schedule's follower (``--schedule``); refused when its peak needs more replicas
    than the stack runs."""
    if settings.schedule is None:
        return None
    schedule = read_schedule(settings.schedule)
    if schedule.peak_replicas > settings.replicas:
        raise CliError(
            f"--schedule: its peak needs {schedule.peak_replicas} replicas, "
            f"--replicas is {settings.replicas}",
            exit_code=2,
        )
    return follower_for(schedule)


def prepare_edge(settings: UpSettings, layout: StackLayout, say: Say) -> None:
    """The edge's TLS pair: the given one, or the run's own, made once (self-signed)."""
    if not settings.uses_tls or settings.tls_cert is not None:
        return
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    names += [] if settings.host in ("0.0.0.0", "::", "") else [settings.host]
    try:
        made = ensure_certificate(layout.tls_cert, layout.tls_key, names=list(dict.fromkeys(names)))
    except (CertificateError, ValueError) as exc:
        raise CliError(f"the edge's TLS certificate: {exc}") from None
    if made == "made":
        say(f"vkit up: made a self-signed TLS certificate: {layout.tls_cert}")


def edge_note(settings: UpSettings, layout: StackLayout) -> str:
    """What the banner adds when the edge serves TLS with the run's own certificate."""
    if not settings.uses_tls or settings.tls_cert is not None:
        return ""
    cert = layout.tls_cert.resolve()
    return (
        f"\nThe edge's certificate is self-signed ({cert}): give clients that file\n"
        f"(curl --cacert {cert}; Python: SSL_CERT_FILE={cert}), or --tls-cert/--tls-key.\n"
    )


def resolve_ports(settings: UpSettings) -> StackPorts:
    """Explicit ports are checked; the internal ones left unset are picked free. With the
    edge in front, ``settings.port`` is the edge's and the gateway gets a free one."""
    check_ports({"edge" if settings.uses_edge else "gateway": settings.port}, settings.host)
    internal = {f"replica-{i}": port for i, port in enumerate(settings.replica_ports or [])}
    if settings.nginx_port:
        internal["nginx"] = settings.nginx_port
    if settings.redis_port and settings.redis:
        internal["redis"] = settings.redis_port
    check_ports(internal)
    free = iter(pick_free_ports(settings.replicas + 4))
    replicas = settings.replica_ports or [next(free) for _ in range(settings.replicas)]
    return StackPorts(
        gateway=next(free) if settings.uses_edge else settings.port,
        edge=settings.port if settings.uses_edge else None,
        nginx=settings.nginx_port or next(free),
        replicas=tuple(replicas),
        redis=(settings.redis_port or next(free)) if settings.redis else None,
        gateway_admin=next(free),
    )


def prepare_run_dir(layout: StackLayout) -> None:
    """Fresh logs and keys for this run; the tiny model is kept between runs."""
    for stale in (layout.logs, layout.nginx_prefix, layout.edge_prefix):
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir(parents=True)
    layout.keys_file.unlink(missing_ok=True)


def resolve_model(settings: UpSettings, layout: StackLayout, say: Say) -> str:
    if settings.model is not None:
        return settings.model
    say(f"vkit up: preparing the built-in tiny model in {layout.tiny_model_dir} ...")
    return str(build_tiny_model(layout.tiny_model_dir).resolve())


def group_model_paths(fits: list[GroupFit], layout: StackLayout, say: Say) -> dict[str, str]:
    """What each group's replicas load: the built-in tiny model built here, else as given."""
    paths = {fit.name: fit.entry.model for fit in fits}
    if any(model == TINY_MODEL_NAME for model in paths.values()):
        tiny = resolve_model(UpSettings(), layout, say)
        paths = {name: tiny if model == TINY_MODEL_NAME else model for name, model in paths.items()}
    return paths


def start_and_wait(group: ProcessGroup, plan: StackPlan, settings: UpSettings, say: Say) -> None:
    backends = [group.start(spec) for spec in plan.specs if spec.name != "gateway"]
    nginx = ", NGINX" if settings.routing == "round_robin" else ""
    nginx += ", the edge" if settings.uses_edge else ""
    say(
        f"vkit up: starting {settings.replicas} replica(s){nginx} and the gateway "
        f"({settings.routing} routing); logs in {StackLayout(settings.run_dir).logs}"
    )
    group.wait_ready(
        backends, settings.startup_timeout_s, on_progress=_progress(say), progress_every_s=10
    )
    say("vkit up: replicas ready; starting the gateway ...")
    gateway = [group.start(spec) for spec in plan.specs if spec.name == "gateway"]
    group.wait_ready(gateway, 60.0, on_progress=_progress(say))


def _progress(say: Say) -> Callable[[Sequence[str], float], None]:
    def report(pending: Sequence[str], elapsed: float) -> None:
        say(f"  ... {elapsed:4.0f} s, waiting for {', '.join(pending)}")

    return report


def watch(
    group: ProcessGroup,
    say: Say,
    poll_s: float = 1.0,
    policy: RestartPolicy | None = None,
    scheduled: ScheduledReplicas | None = None,
    stop_grace_s: float = 15.0,
) -> NoReturn:
    """Serve until interrupted: crashed replicas are started again (with backoff), a dead
    front end (NGINX, the gateway, Redis) is fatal; with a schedule, replicas are parked
    and started again as its floor changes."""
    keeper = ReplicaKeeper(group, say, policy)
    while True:
        keeper.step()
        if scheduled is not None:
            scheduled.step(keeper, say, stop_grace_s)
        time.sleep(poll_s)


@dataclass
class ScheduledReplicas:
    """The schedule as ``vkit up`` follows it: the replicas' URLs in the gateway's
    discovery file, a replica taken out of it before it is stopped."""

    follower: ScheduleFollower
    urls: tuple[str, ...]
    replicas_file: Path
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.running = len(self.urls)

    def step(self, keeper: ReplicaKeeper, say: Say, stop_grace_s: float) -> None:
        target = self.follower.due()
        if target is None:
            return
        say(f"vkit up: the schedule asks for {target} replica(s) now")
        write_replicas_file(self.replicas_file, self.urls[:target])
        if target < self.running:  # the gateway reads the file again before any stops
            self.sleep(2 * REPLICAS_FILE_INTERVAL_S + 1)
        keeper.scale_to(target, stop_grace_s)
        self.running = target


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
