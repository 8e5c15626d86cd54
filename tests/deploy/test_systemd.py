"""systemd units and install.sh: staged with ``--destdir``, checked by systemd-analyze.

``systemd-analyze verify`` insists that ExecStart's binary exists. install.sh rewrites
the units' ``/opt/vkit/venv/bin/vkit`` to ``--vkit-bin``; the tests stage with a small
``vkit`` script that runs this interpreter's ``python -m vkit``, so what is verified is
exactly what install.sh would install (and install.sh really renders the NGINX site).
"""

from __future__ import annotations

import configparser
import contextlib
import doctest
import grp
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

import vkit.render.systemd as systemd_host
from gateway.prompt_tokens import ModelCounters, build_prompt_counter
from gateway.settings import load_settings
from launcher.supervision.launch_spec import LaunchSettings, resolve_launch
from launcher.supervision.profiles import LaunchEnvironment, load_profile
from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from tests.deploy.systemd_install import install, vkit_script
from tests.vllm_standin import Script, standin_in_thread
from vkit.cli import build_parser
from vkit.commands.launch import settings_from
from vkit.commands.render_systemd import SystemdArgs, plan_host
from vkit.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
PROFILE = ROOT / "configs" / "deployments" / "llama-3.1-8b-rtx4090.yaml"
# A 70B model in bf16: it fits two H200 per replica (tensor parallel 2), not one.
PROFILE_TP = ROOT / "configs" / "deployments" / "llama-3.1-70b-h200-tp2.yaml"
# How install.sh creates /etc/vkit/keys.yaml (then writes "keys: []" into it).
KEYS_FILE_INSTALL = ["install", "-o", "root", "-m", "0640"]


@pytest.fixture(scope="module")
def vkit_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vkit_script(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, vkit_bin: Path) -> Path:
    root = tmp_path_factory.mktemp("stage")
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    return root


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text())
    return parser


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, as systemd's EnvironmentFile= reads unquoted values."""
    return dict(re.findall(r"^(\w+)=(.*)$", path.read_text(), re.M))


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, value
    return int(match.group(1))


@pytest.mark.system
def test_install_stages_units_profile_ports_and_secrets(staged: Path, vkit_bin: Path) -> None:
    etc = staged / "etc" / "vkit"
    assert env_file(etc / "replica-0.env") == {
        "VKIT_REPLICA_PORT": "8001", "CUDA_VISIBLE_DEVICES": "0", "VKIT_TENSOR_PARALLEL": "1"
    }  # fmt: skip
    assert env_file(etc / "replica-1.env") == {
        "VKIT_REPLICA_PORT": "8002", "CUDA_VISIBLE_DEVICES": "1", "VKIT_TENSOR_PARALLEL": "1"
    }  # fmt: skip
    assert (etc / "replica.yaml").read_text() == PROFILE.read_text()
    env = dict(re.findall(r"^(\w+)=(.*)$", (etc / "vkit.env").read_text(), re.M))
    assert len(env["VLLM_API_KEY"]) >= 32
    assert env["VKIT_GATEWAY_UPSTREAM_API_KEY"] == env["VLLM_API_KEY"]
    assert (etc / "vkit.env").stat().st_mode & 0o077 == 0o040  # group-readable only
    service = (staged / "etc/systemd/system/vllm@.service").read_text()
    assert f"ExecStart={vkit_bin} launch" in service
    keys = etc / "keys.yaml"  # empty, for the gateway's group (chgrp vkit on a real install)
    assert keys.read_text() == "keys: []\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640


@pytest.mark.system
def test_gateway_env_files_are_what_the_gateway_reads(staged: Path) -> None:
    env = unit_environment(staged, "vkit-gateway.service")
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.upstream_urls == ["http://127.0.0.1:8000"]  # the NGINX site's listen
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == env["VLLM_API_KEY"]
    # /metrics on a loopback admin listener: the gateway's 8080 (behind the edge) serves none
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 9180)


@pytest.mark.system
def test_installed_gateway_env_loads_back_into_the_rendered_settings(staged: Path) -> None:
    """install.sh installs what ``vkit render systemd`` rendered: the gateway unit's env files
    add up to the host's GatewaySettings. (The vLLM key is a secret install.sh makes, in
    vkit.env, not a rendered value: left out here, checked above.)"""
    env = unit_environment(staged, "vkit-gateway.service")
    gateway_env = {
        name: value
        for name, value in env.items()
        if name.startswith("VKIT_GATEWAY_") and name != "VKIT_GATEWAY_UPSTREAM_API_KEY"
    }
    args = SystemdArgs(profile=str(PROFILE), gpus=["0", "1"], out=staged)  # install.sh's
    expected = plan_host(args).deployment.gateway
    assert load_settings(environ=gateway_env).model_dump() == expected.model_dump()


@pytest.mark.system
@pytest.mark.parametrize(
    ("stage", "args"), [("staged", ["--gpus", "0,1"]), ("staged_tp", ["--gpus", "0,1,2,3"])]
)
def test_install_is_idempotent_and_keeps_secrets(
    stage: str, args: list[str], request: pytest.FixtureRequest, vkit_bin: Path
) -> None:
    """(The TP stage: its profile's tensor_parallel is the default for --tp.)"""
    root: Path = request.getfixturevalue(stage)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = install(root, vkit_bin, *args)
    assert result.returncode == 0, result.stderr
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.system
@pytest.mark.parametrize(
    "args",
    [
        ["--gpus", "0", "--profile", str(PROFILE)],
        ["--gpus", "0,1,2,3", "--tp", "2", "--profile", str(PROFILE_TP)],
    ],
)
def test_dry_run_writes_nothing(tmp_path: Path, vkit_bin: Path, args: list[str]) -> None:
    result = install(tmp_path, vkit_bin, *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ install" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.system
@pytest.mark.parametrize("args", [["--gpus", "0,x"], ["--bogus"], ["--gpus", "0"]])
def test_install_refuses_bad_arguments(tmp_path: Path, vkit_bin: Path, args: list[str]) -> None:
    """(The last case: no --profile on a first install.)"""
    result = install(tmp_path, vkit_bin, *args)
    assert result.returncode == 2
    assert "install.sh: error:" in result.stderr


@pytest.mark.system
def test_nginx_site_is_the_committed_example(staged: Path) -> None:
    site = staged / "etc/nginx/sites-available/vkit.conf"
    assert site.read_text() == (SYSTEMD / "nginx" / "vkit.conf").read_text()
    assert (staged / "etc/nginx/sites-enabled/vkit.conf").resolve() == site.resolve()


def test_replica_unit_drains_longer_than_vllm_and_pins_its_gpu() -> None:
    service = unit(SYSTEMD / "vllm@.service")["Service"]
    shutdown = yaml.safe_load(PROFILE.read_text())["shutdown_timeout"]
    drain = unit(SYSTEMD / "vllm@.service.d" / "vkit-drain.conf")["Service"]  # rendered
    assert seconds(drain["TimeoutStopSec"]) > shutdown
    assert seconds(service["TimeoutStartSec"]) >= 600
    assert service["Restart"] == "always"
    assert service["KillMode"] == "mixed"  # one SIGTERM, to vkit launch, which forwards it
    assert "CUDA_VISIBLE_DEVICES=%i" in (SYSTEMD / "vllm@.service").read_text()
    assert service["User"] == "vkit"
    # `vkit launch` sends READY=1 and WATCHDOG=1 (launcher/supervision/sd_notify.py):
    # a hung engine restarts.
    assert service["Type"] == "notify"
    assert seconds(service["WatchdogSec"]) >= 30
    # Each of these would hide /dev/nvidia* or close the device policy to it.
    assert not {"PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy"} & set(service)


def systemd_verify(*units: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (Debian package: systemd)")
    return subprocess.run(
        [binary, "verify", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("name", ["vllm@0.service", "vllm@3.service", "vkit-gateway.service"])
def test_systemd_analyze_verifies_the_installed_units(staged: Path, name: str) -> None:
    result = systemd_verify(staged / "etc/systemd/system" / name)
    # verify only warns (exit 0) about unknown keys or bad values: require silence too.
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.integration
def test_systemd_analyze_flags_a_broken_unit(staged: Path, tmp_path: Path) -> None:
    """Guard for the test above: a misspelled key is reported."""
    text = (staged / "etc/systemd/system/vkit-gateway.service").read_text()
    broken = tmp_path / "vkit-gateway.service"
    broken.write_text(text.replace("Restart=always", "Restart=sometimes"))
    result = systemd_verify(broken)
    assert "sometimes" in result.stderr


# --- The keys file: readable by the service user, and nobody else --------------------------

NOBODY = 65534  # uid nobody, gid nogroup: an unprivileged user outside the service group
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="running the gateway as another user (setpriv) needs root"
)


def unused_gid() -> int:
    """A group id no group has: the service group of these tests, created nowhere."""
    return next(gid for gid in range(64000, 60000, -1) if not _group_exists(gid))


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


@pytest.fixture
def etc_vkit() -> Iterator[tuple[Path, int]]:
    """A stand-in for /etc/vkit as install.sh leaves it (root:GROUP 0750), in /tmp so the
    unprivileged users can reach it; removed afterwards. Yields (directory, group id)."""
    gid = unused_gid()
    directory = Path(tempfile.mkdtemp(prefix="vkit-etc-", dir="/tmp"))
    try:
        os.chown(directory, 0, gid)
        directory.chmod(0o750)
        yield directory, gid
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def vkit_cli(*args: str, user: tuple[int, int] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vkit ARGS``, as root or as ``user`` = (uid, gid) without other groups."""
    prefix = [] if user is None else setpriv(*user)
    argv = [*prefix, sys.executable, "-m", "vkit", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def setpriv(uid: int, gid: int) -> list[str]:
    binary = shutil.which("setpriv")
    if binary is None:
        pytest.fail("setpriv is not installed (Debian package: util-linux)")
    return [binary, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def can_run_python_as(uid: int, gid: int) -> str | None:
    """Why this interpreter cannot import the gateway as ``uid`` (None: it can)."""
    probe = [*setpriv(uid, gid), sys.executable, "-c", "import gateway.app, vkit.cli"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


@dataclass
class ServedGateway:
    proc: subprocess.Popen[str]
    url: str

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=30)
        return out


def serve_as(
    uid: int,
    gid: int,
    keys_file: Path,
    cwd: Path,
    settings: dict[str, str] | None = None,
    umask: int = -1,
) -> ServedGateway:
    """``vkit gateway`` as ``uid``:``gid`` on ``keys_file``, its upstream unreachable unless
    ``settings`` (more ``VKIT_GATEWAY_*`` variables) name one."""
    port = free_port()
    env = {
        **os.environ,
        "VKIT_GATEWAY_KEYS_FILE": str(keys_file),
        "VKIT_GATEWAY_UPSTREAMS": '["http://127.0.0.1:9"]',  # nothing there: 503, not 401
        "VKIT_GATEWAY_PORT": str(port),
        **(settings or {}),
    }
    argv = [*setpriv(uid, gid), sys.executable, "-m", "vkit", "gateway"]
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        umask=umask,
    )
    return ServedGateway(proc, f"http://127.0.0.1:{port}")


def wait_serving(gateway: ServedGateway, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if gateway.proc.poll() is not None:
            pytest.fail(f"the gateway exited ({gateway.proc.returncode}):\n{gateway.output()}")
        try:
            if httpx.get(f"{gateway.url}/livez", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway did not serve in {timeout_s} s:\n{gateway.output()}")
        time.sleep(0.2)


def status_with(gateway: ServedGateway, secret: str) -> int:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {secret}"}
    url = f"{gateway.url}/v1/chat/completions"
    return httpx.post(url, json=body, headers=headers, timeout=30.0).status_code


def secret_of(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def mode_owner_group(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


@pytest.fixture(scope="module")
def unprivileged_python() -> str | None:
    """Why this interpreter cannot run the gateway as an unprivileged user (None: it can)."""
    return can_run_python_as(NOBODY, NOBODY) if os.geteuid() == 0 else "not root"


@pytest.fixture
def service_user(etc_vkit: tuple[Path, int], unprivileged_python: str | None) -> tuple[int, int]:
    """(uid, gid) the gateway runs as: nobody, in the service group only."""
    if unprivileged_python is not None:
        reason = unprivileged_python
        pytest.skip(f"this Python cannot import the gateway as an unprivileged user: {reason}")
    return NOBODY, etc_vkit[1]


@pytest.mark.system
@needs_root
def test_keys_added_to_the_installed_file_stay_readable_by_the_service_user_only(
    etc_vkit: tuple[Path, int], service_user: tuple[int, int]
) -> None:
    """install.sh creates /etc/vkit/keys.yaml root:vkit 0640; ``vkit keys add`` (as root,
    as documented) must keep it so, or the gateway (user vkit) gets "Permission denied"."""
    directory, gid = etc_vkit
    keys = directory / "keys.yaml"
    install = [*KEYS_FILE_INSTALL, "-g", str(gid), "/dev/null", str(keys)]
    subprocess.run(install, check=True, timeout=30)
    keys.write_text("keys: []\n")  # what install.sh writes
    alice = secret_of(vkit_cli("keys", "add", "alice", "--file", str(keys), "--rpm", "60"))
    bob = secret_of(vkit_cli("keys", "add", "bob", "--file", str(keys)))
    assert vkit_cli("keys", "disable", "bob", "--file", str(keys)).returncode == 0
    assert mode_owner_group(keys) == ("0o640", 0, gid)
    outsider = subprocess.run(
        [*setpriv(NOBODY, NOBODY), "cat", str(keys)], capture_output=True, text=True, timeout=30
    )
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
    gateway = serve_as(*service_user, keys, directory)
    try:
        wait_serving(gateway)
        assert status_with(gateway, alice) == 503  # authenticated; nothing upstream
        assert status_with(gateway, bob) == 401  # disabled
        assert status_with(gateway, "vk-not-a-key") == 401
    finally:
        gateway.output()


@pytest.mark.system
@needs_root
def test_keys_add_group_makes_a_new_file_for_the_service_group(
    etc_vkit: tuple[Path, int], service_user: tuple[int, int]
) -> None:
    directory, gid = etc_vkit
    keys = directory / "keys.yaml"
    alice = secret_of(vkit_cli("keys", "add", "alice", "--file", str(keys), "--group", str(gid)))
    assert mode_owner_group(keys) == ("0o640", 0, gid)
    gateway = serve_as(*service_user, keys, directory)
    try:
        wait_serving(gateway)
        assert status_with(gateway, alice) == 503
    finally:
        gateway.output()
    unknown = vkit_cli("keys", "add", "bob", "--file", str(keys), "--group", "no-such-group-x")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "vkit keys: error: no group named 'no-such-group-x'"


@pytest.mark.system
@needs_root
@pytest.mark.parametrize("state", ["missing", "unreadable"])
def test_a_keys_file_the_gateway_cannot_read_is_exit_2_which_the_unit_does_not_restart(
    etc_vkit: tuple[Path, int], service_user: tuple[int, int], state: str
) -> None:
    directory, _ = etc_vkit
    keys = directory / "keys.yaml"
    if state == "unreadable":
        secret_of(vkit_cli("keys", "add", "alice", "--file", str(keys)))  # root's, 0600
        assert mode_owner_group(keys) == ("0o600", 0, 0)
    gateway = serve_as(*service_user, keys, directory)
    assert gateway.proc.wait(timeout=60) == 2
    lines = gateway.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vkit gateway: error: "), lines
    assert str(keys) in lines[0]
    service = unit(SYSTEMD / "vkit-gateway.service")["Service"]
    assert "2" in service["RestartPreventExitStatus"].split()


@pytest.mark.system
@needs_root
def test_the_service_user_keeps_the_usage_ledger_in_its_state_directory(
    staged: Path, etc_vkit: tuple[Path, int], service_user: tuple[int, int]
) -> None:
    """The installed settings keep the ledger in SQLite in the unit's StateDirectory=: the
    service user, in that directory as systemd creates it (the user's, StateDirectoryMode=)
    and with the unit's UMask=, writes the file, readable by itself only, and what it wrote
    is what the client was served."""
    service = unit(staged / "etc/systemd/system/vkit-gateway.service")["Service"]
    state_dir = Path("/var/lib") / service["StateDirectory"]
    ledger = gateway_settings(unit_environment(staged, "vkit-gateway.service")).ledger
    assert ledger.enabled and ledger.url == f"sqlite:///{state_dir}/usage.sqlite3"
    assert service["ReadOnlyPaths"] == "/etc/vkit" and service["ProtectSystem"] == "strict"
    directory, gid = etc_vkit
    keys = directory / "keys.yaml"
    alice = secret_of(vkit_cli("keys", "add", "alice", "--file", str(keys), "--group", str(gid)))
    state = directory.parent / f"{directory.name}-state"  # stands in for /var/lib/vkit-gateway
    state.mkdir()
    try:
        os.chown(state, *service_user)
        state.chmod(int(service["StateDirectoryMode"], 8))
        with standin_in_thread(Script(chunk_delay=0.0)) as upstream:
            settings = {
                "VKIT_GATEWAY_UPSTREAMS": json.dumps([upstream.url]),
                "VKIT_GATEWAY_LEDGER__ENABLED": "true",
                "VKIT_GATEWAY_LEDGER__URL": ledger.url.replace(str(state_dir), str(state)),
            }
            umask = int(service["UMask"], 8)
            gateway = serve_as(*service_user, keys, directory, settings, umask)
            try:
                wait_ready(gateway)
                served = [served_tokens(gateway, alice) for _ in range(3)]
            finally:
                gateway.proc.terminate()  # SIGTERM: the last flush, then exit
                assert gateway.proc.wait(timeout=30) in (0, -signal.SIGTERM), gateway.output()
        database = state / "usage.sqlite3"
        assert mode_owner_group(database) == ("0o600", *service_user)
        assert mode_owner_group(state) == ("0o700", *service_user)
        with contextlib.closing(sqlite3.connect(database)) as db:
            rows = db.execute(
                "SELECT key, requests, prompt_tokens + completion_tokens FROM usage_hours"
            ).fetchall()
        assert rows == [("alice", 3, sum(served))]
    finally:
        shutil.rmtree(state, ignore_errors=True)


def wait_ready(gateway: ServedGateway, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            pytest.fail(f"the gateway exited ({gateway.proc.returncode}):\n{gateway.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{gateway.url}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"the gateway was not ready in {timeout_s} s:\n{gateway.output()}")


def served_tokens(gateway: ServedGateway, secret: str) -> int:
    """One answered request's tokens (the usage the gateway bills)."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {secret}"}
    url = f"{gateway.url}/v1/chat/completions"
    answer = httpx.post(url, json={**body, "max_tokens": 8}, headers=headers, timeout=30.0)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["total_tokens"])


# --- Hardening that leaves CUDA working ----------------------------------------------------

MAX_EXPOSURE = 4.0
# Each of these would hide /dev/nvidia* or /proc/driver/nvidia, close the device policy to
# the GPU's devices, or forbid the JIT (Triton, torch.compile) writable+executable memory.
CUDA_BREAKERS = {
    "PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "ProcSubset",
    "MemoryDenyWriteExecute", "PrivateNetwork", "RemoveIPC",
}  # fmt: skip
# What CUDA, torch and vLLM call: the driver (ioctl, mmap), NUMA placement and thread
# pinning (mbind, set_mempolicy, sched_setaffinity), CUDA IPC and shared memory (memfd,
# pidfd_open, shm*), AMX permission (arch_prctl), worker processes (clone3, prctl).
CUDA_SYSCALLS = {
    "ioctl", "mmap", "mremap", "madvise", "mbind", "set_mempolicy", "get_mempolicy",
    "sched_setaffinity", "memfd_create", "pidfd_open", "shmget", "shmat", "arch_prctl",
    "clone3", "prctl", "eventfd2", "futex", "sysinfo", "mlock",
}  # fmt: skip


def security_exposure(staged: Path, name: str) -> tuple[float, str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (Debian package: systemd)")
    done = subprocess.run(
        [binary, "security", "--offline=true", f"--root={staged}", "--no-pager", name],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=staged / "etc/systemd/system",
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1)), done.stdout


def syscall_groups() -> dict[str, set[str]]:
    """``systemd-analyze syscall-filter``: every @group and what it lists."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (Debian package: systemd)")
    out = subprocess.run(
        [binary, "syscall-filter", "--no-pager"], capture_output=True, text=True, timeout=60
    ).stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].add(line.strip())
    return groups


def allowed_syscalls(filters: list[str], groups: dict[str, set[str]]) -> set[str]:
    """The allow-list a unit's SystemCallFilter= lines give (``~`` lines remove)."""

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(member) for member in groups[item]))

    allowed: set[str] = set()
    for line in filters:
        words = line.split()
        if words[0].startswith("~"):
            allowed -= set().union(*(expand(w.lstrip("~")) for w in words))
        else:
            allowed |= set().union(*(expand(w) for w in words))
    return allowed


def unit_lines(path: Path, key: str) -> list[str]:
    prefix = f"{key}="
    return [
        line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["vllm@0.service", "vkit-gateway.service"])
def test_systemd_analyze_security_exposure_is_at_most_4(staged: Path, name: str) -> None:
    exposure, report = security_exposure(staged, name)
    assert exposure <= MAX_EXPOSURE, report


@pytest.mark.integration
def test_replica_hardening_leaves_cuda_its_devices_syscalls_and_gpu_numbering() -> None:
    path = SYSTEMD / "vllm@.service"
    service = unit(path)["Service"]
    assert not CUDA_BREAKERS & set(service)
    allowed = allowed_syscalls(unit_lines(path, "SystemCallFilter"), syscall_groups())
    assert allowed >= CUDA_SYSCALLS, sorted(CUDA_SYSCALLS - allowed)
    assert service["SystemCallErrorNumber"] == "EPERM"  # a missed call fails, not SIGSYS
    environment = unit_lines(path, "Environment")
    # %i is the GPU nvidia-smi and DCGM call %i: CUDA's own default order is fastest-first.
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in environment
    assert "CUDA_VISIBLE_DEVICES=%i" in environment
    ordering = unit(path)["Unit"]
    assert "nvidia-persistenced.service" in ordering["After"].split()


# --- What systemd gives an instance: its environment and its command line ------------------


def unit_environment(root: Path, name: str, instance: str = "") -> dict[str, str]:
    """The environment systemd gives ``name`` (a staged unit) for ``instance``: its
    Environment= lines, then each EnvironmentFile= in order (``-``: may be missing), later
    ones winning, as systemd.exec(5) says."""
    path = root / "etc/systemd/system" / name
    env: dict[str, str] = {}
    for line in unit_lines(path, "Environment"):
        key, value = line.replace("%i", instance).split("=", 1)
        env[key] = value
    for line in unit_lines(path, "EnvironmentFile"):
        file = root / line.removeprefix("-").replace("%i", instance).lstrip("/")
        if line.startswith("-") and not file.exists():
            continue
        env.update(env_file(file))
    return env


def exec_start(root: Path, instance: str) -> list[str]:
    """vllm@INSTANCE's ExecStart, its ``${VAR}`` filled in from the unit's environment
    (a variable that no file sets is a KeyError), its profile path the staged one."""
    (line,) = unit_lines(root / "etc/systemd/system/vllm@.service", "ExecStart")
    env = unit_environment(root, "vllm@.service", instance)
    words = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in line.split()]
    return [word.replace("/etc/vkit/", f"{root}/etc/vkit/") for word in words]


def vllm_command(root: Path, instance: str) -> list[str]:
    """The vLLM command line vllm@INSTANCE's ``vkit launch`` runs (its --dry-run)."""
    done = subprocess.run(
        [*exec_start(root, instance), "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout.strip().splitlines()[-1])


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.system
def test_a_one_gpu_instance_gets_its_gpu_port_and_no_tensor_parallel(staged: Path) -> None:
    env = unit_environment(staged, "vllm@.service", "1")
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("1", "PCI_BUS_ID")
    argv = vllm_command(staged, "1")
    assert flag(argv, "--port") == "8002"
    assert "--tensor-parallel-size" not in argv  # vLLM's default, 1


# --- Tensor parallel: one replica per GPU set ----------------------------------------------


@pytest.fixture(scope="module")
def staged_tp(tmp_path_factory: pytest.TempPathFactory, vkit_bin: Path) -> Path:
    root = tmp_path_factory.mktemp("stage-tp")
    result = install(root, vkit_bin, "--gpus", "0,1,2,3", "--tp", "2", "--profile", str(PROFILE_TP))
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.system
def test_tp_install_writes_one_instance_per_gpu_set(staged_tp: Path) -> None:
    etc = staged_tp / "etc" / "vkit"
    assert sorted(p.name for p in etc.glob("replica-*.env")) == [
        "replica-0-1.env", "replica-2-3.env"
    ]  # fmt: skip
    assert env_file(etc / "replica-2-3.env") == {
        "VKIT_REPLICA_PORT": "8002", "CUDA_VISIBLE_DEVICES": "2,3", "VKIT_TENSOR_PARALLEL": "2"
    }  # fmt: skip
    # The instance's own environment: the set's GPUs, numbered as nvidia-smi numbers them.
    env = unit_environment(staged_tp, "vllm@.service", "2-3")
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("2,3", "PCI_BUS_ID")
    assert env["NCCL_SOCKET_IFNAME"] == "lo"  # the set is on this host


@pytest.mark.system
@pytest.mark.parametrize(
    ("stage", "gpus", "profile", "tp"),
    [("staged", ["0", "1"], PROFILE, None), ("staged_tp", ["0", "1", "2", "3"], PROFILE_TP, 2)],
)
def test_each_instance_launches_its_replicas_settings_of_the_deployment(
    stage: str, gpus: list[str], profile: Path, tp: int | None, request: pytest.FixtureRequest
) -> None:
    """The static unit's ExecStart, its variables from the instance's env files, parsed by
    ``vkit launch``'s own parser, is the replica's settings in the host's Deployment (the
    profile as installed, on the replica's loopback port, with the set's TP size)."""
    root: Path = request.getfixturevalue(stage)
    args = SystemdArgs(profile=str(profile), gpus=gpus, tp=tp, out=root)
    group = plan_host(args).deployment.group
    assert len(group.gpu_sets) == len(group.ports) == len(gpus) // (tp or 1)
    for index, gpu_set in enumerate(group.gpu_sets):
        parsed = build_parser().parse_args(exec_start(root, gpu_set.name)[1:])
        launched = settings_from(parsed, LaunchEnvironment(vllm_cpu_kvcache_space=None))
        assert launched == group.replica_launch(index)


@pytest.mark.system
def test_tp_instance_runs_vllm_with_the_fit_solved_for_its_set(staged_tp: Path) -> None:
    """The unit's own ExecStart (variables from its env files) solves the profile with TP 2:
    the 70B bf16 weights do not fit one H200 at all (install refuses --tp 1, below)."""
    argv = vllm_command(staged_tp, "2-3")
    settings = LaunchSettings(**{**load_profile(str(PROFILE_TP)), "tensor_parallel": 2})
    solved = resolve_launch(settings, gpu_visible=True).options
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--max-model-len") == str(solved.max_model_len)
    assert flag(argv, "--max-num-seqs") == str(solved.max_num_seqs)
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8002")


@pytest.mark.system
def test_tp_nginx_site_lists_one_server_per_set(staged_tp: Path) -> None:
    site = (staged_tp / "etc/nginx/sites-available/vkit.conf").read_text()
    servers = re.findall(r"^\s*server (\S+) ", site, re.M)
    assert servers == ["127.0.0.1:8001", "127.0.0.1:8002"]
    gateway = gateway_settings(unit_environment(staged_tp, "vkit-gateway.service"))
    assert gateway.upstream_urls == ["http://127.0.0.1:8000"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["vllm@0-1.service", "vllm@2-3.service"])
def test_systemd_analyze_verifies_the_tp_instances(staged_tp: Path, name: str) -> None:
    result = systemd_verify(staged_tp / "etc/systemd/system" / name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.integration
def test_tp_instance_exposure_is_at_most_4(staged_tp: Path) -> None:
    exposure, report = security_exposure(staged_tp, "vllm@0-1.service")
    assert exposure <= MAX_EXPOSURE, report


# Each of these would hide /dev/shm (NCCL's and vLLM's shared memory between a set's
# workers), a set's /dev/nvidia* or its P2P/IPC from the unit's processes.
SHARED_MEMORY_BREAKERS = {
    "PrivateDevices", "DevicePolicy", "DeviceAllow", "PrivateIPC", "RemoveIPC",
    "InaccessiblePaths", "TemporaryFileSystem", "ReadOnlyPaths",
}  # fmt: skip


@pytest.mark.integration
def test_replica_hardening_leaves_tensor_parallel_its_shared_memory_and_sockets() -> None:
    path = SYSTEMD / "vllm@.service"
    service = unit(path)["Service"]
    assert not SHARED_MEMORY_BREAKERS & set(service)
    # strict and PrivateTmp leave /dev (so /dev/shm) alone; full /dev access stays possible.
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    families = service["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_NETLINK"} <= set(families)  # NCCL proxy, bootstrap, ifs
    allowed = allowed_syscalls(unit_lines(path, "SystemCallFilter"), syscall_groups())
    nccl = {"pidfd_getfd", "pidfd_open", "memfd_create", "ftruncate", "mmap", "socketpair"}
    assert allowed >= nccl, sorted(nccl - allowed)


@pytest.mark.system
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--gpus", "0,1,2", "--tp", "2"], "3 GPUs cannot be split into sets of 2"),
        (["--gpus", "0,1", "--tp", "x"], "--tp: expected a number"),
        (["--gpus", "0,1", "--tp", "0"], "--tp: expected a number"),
        (["--gpus", "0,0", "--tp", "2"], "GPU id listed twice: 0"),
        (["--gpus", "0,1", "--tp", "1"], "llama-3.1-70b does not fit on h200"),
    ],
)
def test_a_bad_tp_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, vkit_bin: Path, args: list[str], reason: str
) -> None:
    stage, scratch = tmp_path / "stage", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = install(stage, vkit_bin, *args, "--profile", str(PROFILE_TP), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: "), lines
    assert reason in lines[0]
    assert not stage.exists()
    assert list(scratch.iterdir()) == []  # the renderer's staging directory is removed


@pytest.mark.system
def test_reinstall_with_other_sets_names_the_instances_left_over(
    tmp_path: Path, vkit_bin: Path
) -> None:
    first = install(tmp_path, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert first.returncode == 0, first.stderr
    again = install(tmp_path, vkit_bin, "--gpus", "0,1", "--tp", "2")
    assert again.returncode == 0, again.stderr
    assert "systemctl disable --now vllm@0," in again.stdout
    assert "systemctl disable --now vllm@1," in again.stdout
    assert "next: systemctl enable --now vkit-gateway vllm@0-1\n" in again.stdout


# --- The gateway counts prompts with the served model's tokenizer -----------------------------


def fake_hf_cache(hub: Path, repo: str) -> None:
    """``repo`` in a Hugging Face hub cache, as vLLM leaves it: refs/main -> a snapshot with
    a (word-level) tokenizer.json and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(snapshot / "tokenizer.json"))
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))


@pytest.mark.system
@pytest.mark.parametrize("stage", ["staged", "staged_tp"])
def test_installed_gateway_counts_with_the_tokenizer_the_replicas_serve(
    stage: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    root: Path = request.getfixturevalue(stage)
    instance = "0" if stage == "staged" else "0-1"
    argv = vllm_command(root, instance)
    served, repo = flag(argv, "--served-model-name"), flag(argv, "--model")
    assert served is not None and repo is not None
    tokenizers = gateway_settings(unit_environment(root, "vkit-gateway.service")).tokenizers
    assert tokenizers.models == {served: repo}
    # The cache the replicas download into (HF_HOME of vllm@.service, plus /hub).
    replica_env = unit_environment(root, "vllm@.service", instance)
    assert tokenizers.hf_cache == Path(replica_env["HF_HOME"]) / "hub"
    # With that cache filled, the gateway's counter is the tokenizer's, not the byte bound.
    hub = tmp_path / "hub"
    fake_hf_cache(hub, repo)
    counter = build_prompt_counter(tokenizers.model_copy(update={"hf_cache": hub}))
    assert isinstance(counter, ModelCounters) and set(counter.counters) == {served}
    body = {"messages": [{"role": "user", "content": "hello " * 50}]}
    assert counter.count({"model": served, **body}) < counter.count({"model": "other", **body})


@pytest.mark.system
def test_the_gateway_user_can_read_the_replicas_hf_cache(staged: Path) -> None:
    """The gateway runs as the user that writes the cache (through a umask that leaves it
    readable), and no sandboxing setting of its unit hides the cache from it."""
    replica = unit(staged / "etc/systemd/system/vllm@.service")["Service"]
    gateway = unit(staged / "etc/systemd/system/vkit-gateway.service")["Service"]
    hf_cache = Path(unit_environment(staged, "vllm@.service", "0")["HF_HOME"]) / "hub"
    assert (gateway["User"], gateway["Group"]) == (replica["User"], replica["Group"])
    assert int(replica["UMask"], 8) & 0o400 == 0
    assert any(hf_cache.is_relative_to(p) for p in replica["ReadWritePaths"].split())
    assert gateway["ProtectHome"] == "yes" and not hf_cache.is_relative_to("/home")
    hiding = ("InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "RootDirectory")
    assert not set(hiding) & set(gateway)
    home = staged / "var/lib/vkit"  # install.sh: 0750, vkit:vkit on a real install
    assert stat.S_IMODE(home.stat().st_mode) == 0o750


def test_systemd_host_files_module_examples() -> None:
    failures, tried = doctest.testmod(systemd_host, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


# --- Routing: --routing aware lists the replicas' ports as the gateway's upstreams ---------


@pytest.fixture(scope="module")
def staged_aware(tmp_path_factory: pytest.TempPathFactory, vkit_bin: Path) -> Path:
    root = tmp_path_factory.mktemp("stage-aware")
    args = ["--gpus", "0,1,2,3", "--tp", "2", "--profile", str(PROFILE_TP), "--routing", "aware"]
    result = install(root, vkit_bin, *args)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.system
def test_aware_install_routes_the_gateway_to_each_replicas_port(staged_aware: Path) -> None:
    env = unit_environment(staged_aware, "vkit-gateway.service")
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.routing == "aware"
    assert settings.upstream_urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    # No NGINX site between the gateway and the replicas; the edge stays in front of it.
    assert not (staged_aware / "etc/nginx/sites-available/vkit.conf").exists()
    assert (staged_aware / "etc/nginx/sites-enabled/vkit-edge.conf").is_symlink()


@pytest.mark.system
def test_round_robin_install_routes_through_nginx(staged: Path) -> None:
    settings = gateway_settings(unit_environment(staged, "vkit-gateway.service"))
    assert settings.routing == "round_robin"
    assert settings.upstream_urls == ["http://127.0.0.1:8000"]
    assert (staged / "etc/nginx/sites-enabled/vkit.conf").is_symlink()


@pytest.mark.system
def test_install_puts_the_edge_in_front_with_a_first_certificate(staged: Path) -> None:
    settings = gateway_settings(unit_environment(staged, "vkit-gateway.service"))
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)  # only the edge faces clients
    edge = staged / "etc/nginx/sites-available/vkit-edge.conf"
    assert edge.read_text() == (SYSTEMD / "nginx" / "vkit-edge.conf").read_text()
    assert (staged / "etc/nginx/sites-enabled/vkit-edge.conf").resolve() == edge.resolve()
    tls = staged / "etc/vkit/tls"
    assert stat.S_IMODE((tls / "key.pem").stat().st_mode) == 0o600
    assert (tls / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.system
def test_switching_an_install_to_aware_rewrites_its_routing(tmp_path: Path, vkit_bin: Path) -> None:
    assert install(tmp_path, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE)).returncode == 0
    result = install(tmp_path, vkit_bin, "--gpus", "0,1", "--routing", "aware")
    assert result.returncode == 0, result.stderr
    assert "sites-enabled/vkit.conf" in result.stdout  # the old site is named as unused
    settings = gateway_settings(unit_environment(tmp_path, "vkit-gateway.service"))
    assert settings.upstream_urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]


@pytest.mark.system
def test_a_gateway_env_that_overrides_routing_is_refused(tmp_path: Path, vkit_bin: Path) -> None:
    etc = tmp_path / "etc" / "vkit"
    etc.mkdir(parents=True)
    (etc / "gateway.env").write_text('VKIT_GATEWAY_UPSTREAMS=["http://127.0.0.1:8000"]\n')
    args = ["--gpus", "0", "--profile", str(PROFILE), "--routing", "aware"]
    result = install(tmp_path, vkit_bin, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "VKIT_GATEWAY_UPSTREAMS" in result.stderr
    assert not (etc / "replica-0.env").exists()


@pytest.mark.system
def test_an_unknown_routing_is_refused(tmp_path: Path, vkit_bin: Path) -> None:
    result = install(tmp_path, vkit_bin, "--gpus", "0", "--profile", str(PROFILE), "--routing", "x")
    assert result.returncode == 2
    assert "--routing" in result.stderr


@pytest.mark.system
def test_an_earlier_installs_nginx_upstream_line_still_installs_round_robin(
    tmp_path: Path, vkit_bin: Path
) -> None:
    etc = tmp_path / "etc" / "vkit"
    etc.mkdir(parents=True)
    (etc / "gateway.env").write_text('VKIT_GATEWAY_UPSTREAMS=["http://127.0.0.1:8000"]\n')
    result = install(tmp_path, vkit_bin, "--gpus", "0", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    settings = gateway_settings(unit_environment(tmp_path, "vkit-gateway.service"))
    assert settings.upstream_urls == ["http://127.0.0.1:8000"]
