"""systemd units and install.sh: staged with ``--destdir``, checked by systemd-analyze.

``systemd-analyze verify`` insists that ExecStart's binary exists. install.sh rewrites
the units' ``/opt/vkit/venv/bin/vkit`` to ``--vkit-bin``; the tests stage with a small
``vkit`` script that runs this interpreter's ``python -m vkit``, so what is verified is
exactly what install.sh would install (and install.sh really renders the NGINX site).
"""

from __future__ import annotations

import configparser
import grp
import os
import re
import shutil
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

from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from vkit.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
PROFILE = ROOT / "configs" / "deployments" / "llama-3.1-8b-rtx4090.yaml"
# How install.sh creates /etc/vkit/keys.yaml (then writes "keys: []" into it).
KEYS_FILE_INSTALL = ["install", "-o", "root", "-m", "0640"]


@pytest.fixture(scope="module")
def vkit_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "vkit"
    path.write_text(f'#!/bin/sh\ncd "{ROOT}" && exec "{sys.executable}" -m vkit "$@"\n')
    path.chmod(0o755)
    return path


def install(destdir: Path, vkit_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(SYSTEMD / "install.sh"), "--destdir", str(destdir), "--vkit-bin", str(vkit_bin)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


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


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, value
    return int(match.group(1))


def test_install_stages_units_profile_ports_and_secrets(staged: Path, vkit_bin: Path) -> None:
    etc = staged / "etc" / "vkit"
    assert (etc / "replica-0.env").read_text() == "VKIT_REPLICA_PORT=8001\n"
    assert (etc / "replica-1.env").read_text() == "VKIT_REPLICA_PORT=8002\n"
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


def test_gateway_env_files_are_what_the_gateway_reads(staged: Path) -> None:
    env: dict[str, str] = {}
    for name in ("vkit.env", "gateway.env"):  # the unit's EnvironmentFile= order
        text = (staged / "etc" / "vkit" / name).read_text()
        env.update(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.upstream_urls == ["http://127.0.0.1:8000"]  # the NGINX site's listen
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == env["VLLM_API_KEY"]
    # /metrics on a loopback admin listener: the public 0.0.0.0:8080 serves none
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 9180)


def test_install_is_idempotent_and_keeps_secrets(staged: Path, vkit_bin: Path) -> None:
    before = {p: p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    result = install(staged, vkit_bin, "--gpus", "0,1")
    assert result.returncode == 0, result.stderr
    after = {p: p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    assert after == before


def test_dry_run_writes_nothing(tmp_path: Path, vkit_bin: Path) -> None:
    result = install(tmp_path, vkit_bin, "--gpus", "0", "--profile", str(PROFILE), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ install" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--gpus", "0,x"], ["--bogus"], ["--gpus", "0"]])
def test_install_refuses_bad_arguments(tmp_path: Path, vkit_bin: Path, args: list[str]) -> None:
    """(The last case: no --profile on a first install.)"""
    result = install(tmp_path, vkit_bin, *args)
    assert result.returncode == 2
    assert "install.sh: error:" in result.stderr


def test_nginx_site_is_the_committed_example(staged: Path) -> None:
    site = staged / "etc/nginx/sites-available/vkit.conf"
    assert site.read_text() == (SYSTEMD / "nginx" / "vkit.conf").read_text()
    assert (staged / "etc/nginx/sites-enabled/vkit.conf").resolve() == site.resolve()


def test_replica_unit_drains_longer_than_vllm_and_pins_its_gpu() -> None:
    service = unit(SYSTEMD / "vllm@.service")["Service"]
    shutdown = yaml.safe_load(PROFILE.read_text())["shutdown_timeout"]
    assert seconds(service["TimeoutStopSec"]) > shutdown
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


@pytest.mark.services
@pytest.mark.parametrize("name", ["vllm@0.service", "vllm@3.service", "vkit-gateway.service"])
def test_systemd_analyze_verifies_the_installed_units(staged: Path, name: str) -> None:
    result = systemd_verify(staged / "etc/systemd/system" / name)
    # verify only warns (exit 0) about unknown keys or bad values: require silence too.
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.services
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


def serve_as(uid: int, gid: int, keys_file: Path, cwd: Path) -> ServedGateway:
    """``vkit gateway`` as ``uid``:``gid`` on ``keys_file``, its upstream unreachable."""
    port = free_port()
    env = {
        **os.environ,
        "VKIT_GATEWAY_KEYS_FILE": str(keys_file),
        "VKIT_GATEWAY_UPSTREAMS": '["http://127.0.0.1:9"]',  # nothing there: 503, not 401
        "VKIT_GATEWAY_PORT": str(port),
    }
    argv = [*setpriv(uid, gid), sys.executable, "-m", "vkit", "gateway"]
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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


@pytest.mark.services
@pytest.mark.parametrize("name", ["vllm@0.service", "vkit-gateway.service"])
def test_systemd_analyze_security_exposure_is_at_most_4(staged: Path, name: str) -> None:
    exposure, report = security_exposure(staged, name)
    assert exposure <= MAX_EXPOSURE, report


@pytest.mark.services
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
