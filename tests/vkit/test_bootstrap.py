"""``make demo`` / ``make test`` on a fresh machine: what is missing -> which apt-get command.

The decision is pure (:func:`plan_bootstrap`); the shell is run for real: the Makefile's step
as an unprivileged user (``setpriv``) with a PATH that lacks the programs, and the root path
with ``--dry-run`` (an ``apt-get`` that would fail if it ran), so nothing is installed here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vkit.bootstrap import (
    DEMO_PROGRAMS,
    PROFILES,
    TEST_PROGRAMS,
    Machine,
    apt_commands,
    plan_bootstrap,
    plan_docker_daemon,
    venv_works,
)

ROOT = Path(__file__).resolve().parents[2]
NOBODY = (65534, 65534)  # nobody:nogroup
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setpriv and the root path need root")


def machine(*missing: str, venv: bool = True, root: bool = False, apt: bool = True) -> Machine:
    return Machine(
        missing_programs=missing,
        venv_works=venv,
        python_version=(3, 11),
        is_root=root,
        has_apt=apt,
    )


# --- the decision --------------------------------------------------------------------------


def test_nothing_missing_means_nothing_to_do() -> None:
    for profile in PROFILES:
        plan = plan_bootstrap(profile, machine())
        assert plan.ready and plan.commands == () and plan.hint is None


def test_root_installs_exactly_the_missing_packages_after_an_update() -> None:
    plan = plan_bootstrap("demo", machine("redis-server", root=True))
    assert plan.packages == ("redis-server",)
    assert plan.hint is None
    assert plan.commands == (
        ("apt-get", "update", "-qq"),
        ("apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"),
    )


def test_a_python_without_venv_support_adds_its_own_venv_package() -> None:
    plan = plan_bootstrap("demo", machine("nginx", venv=False, root=True))
    assert plan.packages == ("nginx", "python3.11-venv")
    other = Machine((), venv_works=False, python_version=(3, 12), is_root=True, has_apt=True)
    assert plan_bootstrap("demo", other).packages == ("python3.12-venv",)


def test_the_tests_need_the_deploy_file_checkers_too() -> None:
    plan = plan_bootstrap("test", machine(*TEST_PROGRAMS, root=True))
    assert plan.packages == (
        "nginx",
        "redis-server",
        "prometheus",
        "prometheus-alertmanager",
        "systemd",
        "docker-compose",
        "docker.io",
        "debootstrap",
        "postgresql",
    )
    # A program only the tests use is no reason to stop the demo.
    assert plan_bootstrap("demo", machine("promtool", "amtool")).ready
    assert set(DEMO_PROGRAMS) < set(TEST_PROGRAMS)


def test_anyone_else_gets_one_line_naming_the_command() -> None:
    plan = plan_bootstrap("demo", machine("nginx", "redis-server"))
    assert plan.commands == ()
    assert plan.hint == (
        "make demo needs nginx, redis-server: run `sudo apt-get update -qq && "
        "sudo apt-get install -y -qq --no-install-recommends nginx redis-server`, "
        "then make demo again (or run it as root)"
    )


def test_without_apt_get_the_line_names_the_packages() -> None:
    for root in (True, False):
        plan = plan_bootstrap("test", machine("promtool", venv=False, root=root, apt=False))
        assert plan.commands == ()
        assert plan.hint == (
            "make test needs promtool, python -m venv with pip: "
            "install prometheus python3.11-venv, then make test again"
        )


def test_apt_commands_keep_the_order_given() -> None:
    assert apt_commands(["b", "a"])[1][-2:] == ("b", "a")


@pytest.mark.integration
def test_venv_works_asks_the_interpreter_itself(tmp_path: Path) -> None:
    made = tmp_path / "venv" / "bin"
    made.mkdir(parents=True)
    (made / "python").touch()
    assert venv_works("/bin/false", tmp_path / "venv")  # made already: nothing to ask
    assert not venv_works("/bin/false", tmp_path / "none")  # "python -m venv" fails


# --- the shell, run for real -----------------------------------------------------------------


def link_python_for_nobody(bin_dir: Path) -> bool:
    """``bin_dir/python3.11``: a Python 3.11 the unprivileged user can start through that
    link (the venv's may live under /root); False when there is none."""
    link = bin_dir / "python3.11"
    for candidate in ("/usr/bin/python3.11", getattr(sys, "_base_executable", sys.executable)):
        if not Path(candidate).exists():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(candidate)
        probe = [*setpriv(), str(link), "-c", "import sys; assert sys.version_info >= (3, 11)"]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return True
    return False


def setpriv() -> list[str]:
    binary = shutil.which("setpriv")
    if binary is None:
        pytest.fail("setpriv is not installed (Debian package: util-linux)")
    uid, gid = NOBODY
    return [binary, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


@pytest.fixture
def bare_bin() -> Iterator[Path]:
    """A world-readable directory for PATH: python3.11, make, and an apt-get that fails if
    anything runs it; none of the programs the kit needs. Also holds a made venv."""
    directory = Path(tempfile.mkdtemp(prefix="vkit-bootstrap-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        (directory / "bin").mkdir()
        (directory / "bin" / "apt-get").symlink_to("/bin/false")
        make = shutil.which("make")
        if make is not None:
            (directory / "bin" / "make").symlink_to(make)
        (directory / "venv" / "bin").mkdir(parents=True)
        (directory / "venv" / "bin" / "python").touch()
        for path in directory.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def demo_hint(missing: list[str]) -> str:
    return (
        f"make demo needs {', '.join(missing)}: run `sudo apt-get update -qq && sudo apt-get "
        f"install -y -qq --no-install-recommends {' '.join(missing)}`, then make demo again "
        "(or run it as root)"
    )


@pytest.mark.system
@needs_root
def test_unprivileged_make_demo_prints_one_line_and_stops(bare_bin: Path) -> None:
    if not link_python_for_nobody(bare_bin / "bin"):
        pytest.skip("no Python 3.11 the user nobody can run")
    readable = [*setpriv(), "test", "-r", str(ROOT / "vkit" / "bootstrap.py")]
    if subprocess.run(readable, check=False).returncode != 0:
        pytest.skip(f"the user nobody cannot read the checkout ({ROOT})")
    if shutil.which("make") is None:
        pytest.fail("make is not installed (Debian package: make)")
    env = {"PATH": str(bare_bin / "bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    venv = bare_bin / "venv"

    step = [*setpriv(), "make", "--no-print-directory", "bootstrap-demo", f"VENV={venv}"]
    done = subprocess.run(
        step, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    # The Makefile adds /usr/sbin:/sbin (Debian's nginx); redis-server is in neither.
    search = f"{bare_bin / 'bin'}:/usr/sbin:/sbin"
    missing = [name for name in DEMO_PROGRAMS if shutil.which(name, path=search) is None]
    assert "redis-server" in missing
    hint = demo_hint(missing)
    assert done.returncode == 2, done  # make's code for a failed recipe
    assert done.stderr.splitlines()[0] == hint, done.stderr
    assert "Error 1" in done.stderr.splitlines()[-1]  # the step's own exit code

    # The step by itself, on a PATH without /usr/sbin: exactly one line, exit 1.
    module = [*setpriv(), "python3.11", "-m", "vkit.bootstrap", "demo", "--venv", str(venv)]
    direct = subprocess.run(
        module, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert direct.returncode == 1
    assert direct.stdout == ""
    assert direct.stderr.splitlines() == [demo_hint(["nginx", "redis-server"])]


@pytest.mark.integration
@needs_root
def test_root_dry_run_prints_the_apt_get_commands_and_runs_nothing(bare_bin: Path) -> None:
    env = {"PATH": str(bare_bin / "bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    argv = [sys.executable, "-m", "vkit.bootstrap", "test", "--dry-run"]
    argv += ["--venv", str(bare_bin / "venv")]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr  # the apt-get on PATH fails if anything runs it
    packages = "nginx redis-server prometheus prometheus-alertmanager systemd docker-compose"
    packages += " docker.io debootstrap postgresql"
    assert done.stdout.splitlines() == [
        "apt-get update -qq",
        f"apt-get install -y -qq --no-install-recommends {packages}",
    ]
    assert done.stderr.splitlines() == [f"make test: installing {packages} (apt-get)"]


@pytest.mark.system
@needs_root
def test_kubectl_missing_is_one_line_for_anyone_else_and_a_fetch_for_root(bare_bin: Path) -> None:
    if not link_python_for_nobody(bare_bin / "bin"):
        pytest.skip("no Python 3.11 the user nobody can run")
    env = {"PATH": str(bare_bin / "bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    user = [*setpriv(), "python3.11", "-m", "vkit.bootstrap_kubectl"]
    done = subprocess.run(
        user, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert (
        line.startswith("make test needs kubectl: run `sudo ") and "vkit.bootstrap_kubectl" in line
    )
    root = [sys.executable, "-m", "vkit.bootstrap_kubectl", "--dry-run"]
    dry = subprocess.run(
        root, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("fetch https://dl.k8s.io/release/v1.32.4/bin/linux/")
    present = subprocess.run(  # a kubectl on PATH: nothing to do
        [sys.executable, "-m", "vkit.bootstrap_kubectl", "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (present.returncode, present.stdout) == (0, "") or shutil.which("kubectl") is None


def test_the_tests_start_a_docker_daemon_where_none_answers() -> None:
    """Root starts dockerd for ``make test``; anyone else is told how; a running daemon, a
    missing Docker (its packages come first) or the demo: nothing to do."""
    plan = functools.partial(plan_docker_daemon, "test", has_docker=True)
    assert plan(daemon_answers=False, is_root=True) == "start"
    hint = plan(daemon_answers=False, is_root=False)
    assert hint is not None and "sudo dockerd &" in hint and "\n" not in hint
    assert plan(daemon_answers=True, is_root=True) is None
    assert plan_docker_daemon("test", has_docker=False, daemon_answers=False, is_root=True) is None
    assert plan_docker_daemon("demo", has_docker=True, daemon_answers=False, is_root=True) is None


def test_a_docker_client_alone_does_not_stand_for_the_engine() -> None:
    """A machine with a ``docker`` client on PATH but no daemon binary (a client-only install,
    as some machines ship) still gets Debian's docker.io: the engine is what the compose test
    needs, so the program looked for is the daemon's."""
    client_only = {"docker": "/usr/local/bin/docker"}
    missing = [name for name in TEST_PROGRAMS if client_only.get(name) is None]
    plan = plan_bootstrap("test", machine(*missing, root=True))
    assert "docker.io" in plan.packages
