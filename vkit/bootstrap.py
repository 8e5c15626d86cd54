"""What the README's two commands need from the machine before the venv exists.

``make demo`` and ``make test`` run ``python3.11 -m vkit.bootstrap demo|test`` first, with the
bare interpreter: nothing but the standard library is imported here (``vkit/__init__.py``
neither). It looks for the programs the command starts (NGINX and Redis for the demo; the
deploy-file checkers too for the tests) and, while the venv is still to be made, whether this
Python can make one with pip (Debian splits that into ``python3.X-venv``). Then:

- nothing missing: silent, exit 0;
- root, on a machine with apt-get: ``apt-get update`` and ``apt-get install`` of exactly the
  missing packages (``--dry-run`` prints the commands instead), exit 0 once they are there;
- anyone else: one line naming the command to run, exit 1.

``make test`` also needs a Docker daemon: where ``docker info`` gets no answer (no init
system starts one), root starts ``dockerd`` in the background and waits for it
(:func:`plan_docker_daemon`); anyone else gets the one line.

:func:`plan_bootstrap` is the decision, pure: what is missing -> which packages -> what to do.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# program -> the Debian package that installs it.
DEMO_PROGRAMS = {"nginx": "nginx", "redis-server": "redis-server"}
TEST_PROGRAMS = DEMO_PROGRAMS | {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "systemd-analyze": "systemd",
    "docker-compose": "docker-compose",
    # The compose bundle brought up for real: a Docker engine (the daemon's binary: a client
    # alone, as some machines have in /usr/local/bin, runs nothing), and debootstrap for the
    # base image its images are built on (no registry needed, docs/docker-offline.md).
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
    # The usage ledger's PostgreSQL tests start a throwaway cluster with its initdb and
    # postgres (under /usr/lib/postgresql/15/bin; the package's own programs are on PATH).
    "pg_ctlcluster": "postgresql",
}
# Profiles whose tests need a running Docker daemon (started here when none answers).
DOCKER_PROFILES = frozenset({"test"})
DOCKERD_LOG = Path("/var/log/vkit-dockerd.log")
DOCKERD_WAIT_S = 60
# `make test-unit` starts no program: only a Python that can make its venv.
PROFILES = {"demo": DEMO_PROGRAMS, "test": TEST_PROGRAMS, "test-unit": {}}

NEEDS_ROOT = 1


@dataclass(frozen=True)
class Machine:
    """What the shell found: the facts :func:`plan_bootstrap` decides on."""

    missing_programs: tuple[str, ...]
    venv_works: bool
    python_version: tuple[int, int]
    is_root: bool
    has_apt: bool


@dataclass(frozen=True)
class BootstrapPlan:
    """``packages`` to install; ``commands`` to run now (root) or ``hint`` to print (exit 1)."""

    packages: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...] = ()
    hint: str | None = None

    @property
    def ready(self) -> bool:
        return not self.packages


def apt_commands(packages: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """A fresh machine has no package lists yet: update, then install only ``packages``."""
    install = ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages)
    return (("apt-get", "update", "-qq"), install)


def plan_bootstrap(profile: str, machine: Machine) -> BootstrapPlan:
    """The packages behind ``machine``'s missing programs (and venv) for ``make PROFILE``,
    and what to do about them."""
    programs = PROFILES[profile]
    missing = [name for name in programs if name in machine.missing_programs]
    packages = [programs[name] for name in missing]
    if not machine.venv_works:
        major, minor = machine.python_version
        missing.append("python -m venv with pip")
        packages.append(f"python{major}.{minor}-venv")
    wanted = tuple(dict.fromkeys(packages))
    if not wanted:
        return BootstrapPlan(packages=())
    needs = f"make {profile} needs {', '.join(missing)}"
    again = f"then make {profile} again"
    if not machine.has_apt:
        return BootstrapPlan(wanted, hint=f"{needs}: install {' '.join(wanted)}, {again}")
    if machine.is_root:
        return BootstrapPlan(wanted, commands=apt_commands(wanted))
    sudo = " && ".join("sudo " + shlex.join(command) for command in apt_commands(wanted))
    return BootstrapPlan(wanted, hint=f"{needs}: run `{sudo}`, {again} (or run it as root)")


def plan_docker_daemon(
    profile: str, *, has_docker: bool, daemon_answers: bool, is_root: bool
) -> str | None:
    """``"start"`` (root: start dockerd), a one-line hint (anyone else), or None (nothing to
    do: the profile needs no daemon, Docker is missing (the packages come first) or it runs)."""
    if profile not in DOCKER_PROFILES or not has_docker or daemon_answers:
        return None
    if is_root:
        return "start"
    return f"make {profile} needs a running Docker daemon: run `sudo dockerd &`, then again"


# --- the shell -----------------------------------------------------------------------------


def docker_answers() -> bool:
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def start_dockerd(log: Path = DOCKERD_LOG, wait_s: float = DOCKERD_WAIT_S) -> bool:
    """``dockerd`` in the background (its own session, output to ``log``), then wait until
    ``docker info`` answers; True when it does."""
    with log.open("ab") as out:
        subprocess.Popen(
            ["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if docker_answers():
            return True
        time.sleep(1)
    return False


def ensure_docker_daemon(profile: str, *, dry_run: bool) -> int:
    """Start the Docker daemon the tests need (see :func:`plan_docker_daemon`)."""
    has_docker = shutil.which("docker") is not None and shutil.which("dockerd") is not None
    action = plan_docker_daemon(
        profile,
        has_docker=has_docker,
        daemon_answers=has_docker and docker_answers(),
        is_root=os.geteuid() == 0,
    )
    if action is None:
        return 0
    if action != "start":
        print(action, file=sys.stderr)
        return NEEDS_ROOT
    if dry_run:
        print("dockerd &")
        return 0
    print(f"make {profile}: starting dockerd (log: {DOCKERD_LOG})", file=sys.stderr)
    if not start_dockerd():
        print(f"make {profile}: dockerd did not answer in {DOCKERD_WAIT_S} s", file=sys.stderr)
        return 1
    return 0


def venv_works(python: str, venv: Path) -> bool:
    """True when ``venv`` exists, or ``python`` can make a venv with pip (Debian: only with
    ``python3.X-venv``, which brings ensurepip's wheels)."""
    if (venv / "bin" / "python").exists():
        return True
    with tempfile.TemporaryDirectory(prefix="vkit-venv-check-") as scratch:
        made = subprocess.run(
            [python, "-m", "venv", scratch], capture_output=True, timeout=300, check=False
        )
        return made.returncode == 0 and (Path(scratch) / "bin" / "pip").exists()


def look(
    programs: dict[str, str],
    venv: Path,
    which: Callable[[str], str | None] = shutil.which,
) -> Machine:
    return Machine(
        missing_programs=tuple(name for name in programs if which(name) is None),
        venv_works=venv_works(sys.executable, venv),
        python_version=(sys.version_info.major, sys.version_info.minor),
        is_root=os.geteuid() == 0,
        has_apt=which("apt-get") is not None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vkit.bootstrap",
        description="Install what `make demo` / `make test` need (apt-get as root).",
    )
    parser.add_argument("profile", choices=sorted(PROFILES), help="which make command")
    parser.add_argument("--venv", type=Path, default=Path(".venv"), help="the venv make uses")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the apt-get commands, run nothing"
    )
    args = parser.parse_args(argv)
    programs = PROFILES[args.profile]
    plan = plan_bootstrap(args.profile, look(programs, args.venv))
    prog = f"make {args.profile}"
    if plan.ready:
        return ensure_docker_daemon(args.profile, dry_run=args.dry_run)
    if plan.hint is not None:
        print(plan.hint, file=sys.stderr)
        return NEEDS_ROOT
    print(f"{prog}: installing {' '.join(plan.packages)} (apt-get)", file=sys.stderr)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in plan.commands:
        if args.dry_run:
            print(shlex.join(command))
            continue
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            print(f"{prog}: {shlex.join(command)} failed ({done.returncode})", file=sys.stderr)
            return done.returncode
    if args.dry_run:
        return 0
    still = plan_bootstrap(args.profile, look(programs, args.venv))
    if not still.ready:
        print(f"{prog}: still missing after apt-get: {' '.join(still.packages)}", file=sys.stderr)
        return NEEDS_ROOT
    return ensure_docker_daemon(args.profile, dry_run=False)


if __name__ == "__main__":
    sys.exit(main())
