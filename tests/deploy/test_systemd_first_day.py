"""The systemd host's first day on a GPU box: what a reboot, a stop and a RHEL host do.

- ``vllm@`` loads ``nvidia_uvm`` in a privileged pre-start (its own sandbox forbids it);
- every unit's stop timeout covers its drain (:class:`vkit.deployment.DrainBudget`), and the
  gateway stops before NGINX, Redis and the replicas it drains streams from;
- install.sh puts the NGINX site where the host's ``nginx.conf`` includes it (Debian's
  ``sites-enabled``, RHEL's ``conf.d``), and the gateway wants Redis by either unit name.

systemd is not PID 1 where these tests run (a container), so no unit is started here: the
units are checked by ``systemd-analyze verify`` (all of them together, so it resolves their
ordering) and read as systemd reads them; see docs/systemd-host.md.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.nginx_process import nginx_binary
from tests.deploy.systemd_install import SYSTEMD, install, vkit_script
from vkit.commands.render_systemd import SystemdArgs, plan_host
from vkit.exit_codes import UsageError
from vkit.render.systemd import DROP_IN_DIR, drain_drop_ins, systemd_host_files

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "configs" / "deployments" / "llama-3.1-8b-rtx4090.yaml"
TINY_PROFILE = ROOT / "configs" / "deployments" / "tiny-cpu.yaml"
REDIS_UNITS = {"redis-server.service", "redis.service"}  # Debian's name, RHEL's (and valkey's)


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(text)
    return parser


def all_values(text: str, key: str) -> list[str]:
    """Every value of ``key`` (systemd keeps repeated lines; configparser keeps the last)."""
    return re.findall(rf"^{re.escape(key)}=(.*)$", text, re.M)


def words(text: str, key: str) -> set[str]:
    return {word for value in all_values(text, key) for word in value.split()}


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, value
    return int(match.group(1))


REPLICA = (SYSTEMD / "vllm@.service").read_text()
GATEWAY = (SYSTEMD / "vkit-gateway.service").read_text()


# --- nvidia_uvm: loaded by a privileged pre-start --------------------------------------------


def uvm_pre_start() -> str:
    """The replica's ExecStartPre that loads ``nvidia_uvm``."""
    loaders = [line for line in all_values(REPLICA, "ExecStartPre") if "nvidia-modprobe" in line]
    assert len(loaders) == 1, all_values(REPLICA, "ExecStartPre")
    return loaders[0]


def test_replica_loads_nvidia_uvm_in_a_privileged_pre_start() -> None:
    """The sandbox (NoNewPrivileges, no capabilities, ProtectKernelModules) stops CUDA's own
    setuid nvidia-modprobe; '+' runs the pre-start without it, as root (systemd.service(5))."""
    service = unit(REPLICA)["Service"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectKernelModules"] == "yes"
    line = uvm_pre_start()
    prefix = re.match(r"[-+!@:|]*", line)
    assert prefix is not None and "+" in prefix.group(0)
    assert "-" not in prefix.group(0)  # a replica without UVM fails here, not in CUDA init
    assert "nvidia-modprobe -u -c=0" in line


def uvm_script() -> str:
    """The pre-start's shell script for ``vllm@0``, split into words as systemd splits a
    command line (quotes as in a POSIX shell, for what this line uses: no backslashes)."""
    line = uvm_pre_start().lstrip("+")
    assert "\\" not in line
    argv = shlex.split(line)
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv  # one word: the script
    script = argv[2]
    assert "$" not in script and "%" not in script.replace("%i", "")  # systemd expands them
    return script.replace("%i", "0")


def run_uvm_pre_start(path: str) -> subprocess.CompletedProcess[str]:
    """The pre-start's command line as systemd runs it for ``vllm@0``."""
    return subprocess.run(
        ["/bin/sh", "-c", uvm_script()], env={"PATH": path},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.skipif(Path("/dev/nvidia-uvm").exists(), reason="this host has nvidia_uvm loaded")
@pytest.mark.parametrize("modprobe", ["missing", "fails", "succeeds without a device"])
def test_a_replica_that_cannot_load_uvm_fails_with_one_clear_line(
    tmp_path: Path, modprobe: str
) -> None:
    if modprobe != "missing":
        fake = tmp_path / "nvidia-modprobe"
        fake.write_text(f"#!/bin/sh\nexit {1 if modprobe == 'fails' else 0}\n")
        fake.chmod(0o755)
    done = run_uvm_pre_start(f"{tmp_path}:/usr/bin:/bin")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("vllm@0: cannot load nvidia_uvm"), done.stderr


@pytest.mark.integration
def test_the_uvm_pre_start_succeeds_where_the_device_exists(tmp_path: Path) -> None:
    """Where /dev/nvidia-uvm is a character device (the module loaded at boot or built in),
    nothing is run: a stand-in for it, through a fake nvidia-modprobe that records calls."""
    calls = tmp_path / "calls"
    fake = tmp_path / "nvidia-modprobe"
    fake.write_text(f"#!/bin/sh\necho called >> {calls}\nexit 0\n")
    fake.chmod(0o755)
    # /dev/null is a character device on every host: the script's test passes for it.
    script = uvm_script().replace("/dev/nvidia-uvm", "/dev/null")
    done = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not calls.exists()


# --- Stopping: timeouts cover the drain, the gateway stops first -----------------------------


def rendered(profile: Path = PROFILE) -> dict[PurePosixPath, str]:
    args = SystemdArgs(profile=str(profile), gpus=["0", "1"], out=Path("unused"))
    return systemd_host_files(plan_host(args).deployment, listen="127.0.0.1:8000")


@pytest.mark.parametrize("profile", [PROFILE, TINY_PROFILE])
def test_stop_timeouts_are_the_drain_budget_plus_its_margin(profile: Path) -> None:
    args = SystemdArgs(profile=str(profile), gpus=["0", "1"], out=Path("unused"))
    deployment = plan_host(args).deployment
    drain = deployment.drain
    assert drain.gateway_s == deployment.gateway.timeouts.total  # uvicorn's graceful shutdown
    files = systemd_host_files(deployment, listen="127.0.0.1:8000")
    expected = {
        "vllm@.service": drain.grace_s(drain.replica_s),
        "vkit-gateway.service": drain.grace_s(drain.gateway_s),
    }
    for name, grace in expected.items():
        drop_in = files[DROP_IN_DIR / f"{name}.d" / "vkit-drain.conf"]
        assert seconds(unit(drop_in)["Service"]["TimeoutStopSec"]) == grace
    assert expected["vkit-gateway.service"] > 600  # the gateway's longest stream, and more


@pytest.mark.parametrize(
    ("lines", "gateway_s"),
    [
        ("VKIT_GATEWAY_TIMEOUTS__TOTAL=1200\n", 1200),
        ('VKIT_GATEWAY_TIMEOUTS={"total": 90.5, "idle": 30}\n', 91),
        ("# nothing about timeouts\nVKIT_GATEWAY_PORT=8080\n", 600),
    ],
)
def test_the_hosts_gateway_env_sets_the_gateways_stop_timeout(
    tmp_path: Path, lines: str, gateway_s: int
) -> None:
    """gateway.env is the operator's (kept across installs, read last by the unit): a longer
    total timeout there is a longer drain, so a longer TimeoutStopSec."""
    gateway_env = tmp_path / "gateway.env"
    gateway_env.write_text(lines)
    args = SystemdArgs(profile=str(PROFILE), gpus=["0"], gateway_env=gateway_env, out=tmp_path)
    drain = plan_host(args).deployment.drain
    assert drain.gateway_s == gateway_s
    drop_in = drain_drop_ins(drain)[DROP_IN_DIR / "vkit-gateway.service.d/vkit-drain.conf"]
    assert f"TimeoutStopSec={gateway_s + drain.margin_s}\n" in drop_in


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ("VKIT_GATEWAY_TIMEOUT__TOTAL=1200\n", "VKIT_GATEWAY_TIMEOUTS"),
        ("VKIT_GATEWAY_TIMEOUTS__TOTAL=soon\n", "timeouts.total"),
    ],
)
def test_a_bad_gateway_env_is_a_usage_error_naming_the_file(
    tmp_path: Path, lines: str, reason: str
) -> None:
    gateway_env = tmp_path / "gateway.env"
    gateway_env.write_text(lines)
    args = SystemdArgs(profile=str(PROFILE), gpus=["0"], gateway_env=gateway_env, out=tmp_path)
    with pytest.raises(UsageError) as raised:
        plan_host(args)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{gateway_env}: ")
    assert reason in message


def test_the_static_units_leave_stop_timeouts_to_the_drain_drop_ins() -> None:
    """One place for the numbers: a TimeoutStopSec= in a unit would be a second one."""
    assert "TimeoutStopSec" not in unit(REPLICA)["Service"]
    assert "TimeoutStopSec" not in unit(GATEWAY)["Service"]


def test_the_committed_drop_ins_are_the_renderers_output() -> None:
    """deploy/systemd/*.service.d/ are what ``vkit render systemd`` writes for the example
    profile (re-render: ``vkit render systemd --profile PROFILE --gpus 0,1 --out STAGE``)."""
    args = SystemdArgs(profile=str(PROFILE), gpus=["0", "1"], out=Path("unused"))
    drop_ins = drain_drop_ins(plan_host(args).deployment.drain)
    assert drop_ins.items() <= rendered().items()
    for path, text in drop_ins.items():
        assert (SYSTEMD / path.relative_to(DROP_IN_DIR)).read_text() == text, path


def test_the_gateway_stops_before_nginx_redis_and_every_replica() -> None:
    """systemd stops units in the reverse of their start order, and orders only units that
    After=/Before= relate (systemd.unit(5)): the gateway is after NGINX, Redis and (by the
    template's Before=) every vllm@ instance, so on a stop or shutdown it drains its streams
    while all of them still serve."""
    assert {"nginx.service", *REDIS_UNITS} <= words(GATEWAY, "After")
    assert "vkit-gateway.service" in words(REPLICA, "Before")
    # ...and nothing orders a replica after the gateway (that would be a cycle).
    assert "vkit-gateway.service" not in words(REPLICA, "After")
    assert not {w for w in words(GATEWAY, "Before") if w.startswith(("vllm@", "nginx"))}


def test_the_gateway_wants_redis_by_debians_and_rhels_name() -> None:
    assert words(GATEWAY, "Wants") >= REDIS_UNITS
    assert words(GATEWAY, "After") >= REDIS_UNITS
    assert "Requires" not in unit(GATEWAY)["Unit"]  # a missing name is no failure


def test_replicas_start_after_the_nvswitch_fabric_manager() -> None:
    """On NVSwitch boxes (HGX H100/H200) CUDA init fails until nvidia-fabricmanager runs."""
    assert "nvidia-fabricmanager.service" in words(REPLICA, "After")
    assert "nvidia-fabricmanager.service" in words(REPLICA, "Wants")


# --- All units together, through systemd-analyze verify --------------------------------------


@pytest.fixture(scope="module")
def vkit_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vkit_script(tmp_path_factory.mktemp("bin"))


def installed_units(root: Path, vkit_bin: Path) -> Path:
    """The unit directory of a two-replica install staged below ``root``."""
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    return root / "etc/systemd/system"


def verify_together(system: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the gateway and two replica instances at once, from the
    staged unit directory (so it reads the drop-ins beside the units)."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed (Debian package: systemd)")
    for instance in ("vllm@0.service", "vllm@1.service"):
        link = system / instance
        if not link.exists():
            link.symlink_to("vllm@.service")
    names = ["vkit-gateway.service", "vllm@0.service", "vllm@1.service"]
    return subprocess.run(
        [binary, "verify", *(str(system / n) for n in names)],
        capture_output=True, text=True, timeout=60, check=False, cwd=system,
    )  # fmt: skip


@pytest.mark.system
def test_a_reinstall_keeps_the_gateways_stop_timeout_at_its_own_total(
    tmp_path: Path, vkit_bin: Path
) -> None:
    units = installed_units(tmp_path, vkit_bin)
    drop_in = units / "vkit-gateway.service.d" / "vkit-drain.conf"
    assert "TimeoutStopSec=615\n" in drop_in.read_text()
    with (tmp_path / "etc/vkit/gateway.env").open("a") as gateway_env:
        gateway_env.write("VKIT_GATEWAY_TIMEOUTS__TOTAL=1800\n")
    again = install(tmp_path, vkit_bin, "--gpus", "0,1")
    assert again.returncode == 0, again.stderr
    assert "TimeoutStopSec=1815\n" in drop_in.read_text()


@pytest.mark.system
def test_systemd_analyze_verifies_all_units_and_drop_ins_together(
    tmp_path: Path, vkit_bin: Path
) -> None:
    system = installed_units(tmp_path, vkit_bin)
    for path, text in rendered().items():
        if path.is_relative_to(DROP_IN_DIR):
            assert (tmp_path / path).read_text() == text
    result = verify_together(system)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.system
def test_verify_together_reads_the_drop_ins_and_sees_an_ordering_cycle(
    tmp_path: Path, vkit_bin: Path
) -> None:
    """Guards for the test above: verify reads the units' drop-ins (a bad value there is
    reported) and builds the start transaction of the units it loads, ordering included: a
    replica also ordered after the gateway is a cycle only because the template's Before=
    already orders every instance before the gateway."""
    units = installed_units(tmp_path / "stage", vkit_bin)
    bad = tmp_path / "bad"
    shutil.copytree(units, bad, symlinks=True)
    drop_in = bad / "vllm@.service.d" / "vkit-drain.conf"
    drop_in.write_text(drop_in.read_text().replace("TimeoutStopSec=", "TimeoutStopSec=soon"))
    assert "vkit-drain.conf:3: Failed to parse time value" in verify_together(bad).stderr
    looped = tmp_path / "looped"
    shutil.copytree(units, looped, symlinks=True)
    (looped / "vllm@.service.d/after-gateway.conf").write_text(
        "[Unit]\nAfter=vkit-gateway.service\n"
    )
    result = verify_together(looped)
    assert result.returncode != 0
    # Which unit of the cycle systemd names first varies from run to run.
    cycle = r"(vkit-gateway|vllm@0)\.service: Found ordering cycle on (vllm@0|vkit-gateway)\."
    assert re.search(cycle, result.stderr), result.stderr


# --- NGINX: the site goes where the host's nginx.conf includes it ----------------------------

# RHEL, Rocky, Alma, Fedora, Amazon Linux (nginx from the distribution): the http block
# includes conf.d only (the distribution's nginx.conf, trimmed to what matters here).
RHEL_NGINX_CONF = """\
user nginx;
worker_processes auto;
error_log /var/log/nginx/error.log;
pid /run/nginx.pid;
include /usr/share/nginx/modules/*.conf;
events {
    worker_connections 1024;
}
http {
    include             /etc/nginx/mime.types;
    default_type        application/octet-stream;
    # Load modular configuration files from the /etc/nginx/conf.d directory.
    include /etc/nginx/conf.d/*.conf;
    server {
        listen       80;
        server_name  _;
        root         /usr/share/nginx/html;
    }
}
"""
# Debian and Ubuntu: conf.d and sites-enabled (this host's own nginx.conf where it has one).
DEBIAN_NGINX_CONF = """\
user www-data;
pid /run/nginx.pid;
events {
    worker_connections 768;
}
http {
    include /etc/nginx/mime.types;
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}
"""


def host_root(tmp_path: Path, nginx_conf: str) -> Path:
    root = tmp_path / "root"
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/nginx.conf").write_text(nginx_conf)
    (root / "etc/nginx/mime.types").write_text("types {\n    text/html html;\n}\n")
    return root


@pytest.mark.system
def test_on_a_rhel_layout_the_site_goes_to_conf_d(tmp_path: Path, vkit_bin: Path) -> None:
    root = host_root(tmp_path, RHEL_NGINX_CONF)
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    site = root / "etc/nginx/conf.d/vkit.conf"
    assert site.read_text() == (SYSTEMD / "nginx" / "vkit.conf").read_text()
    assert not (root / "etc/nginx/sites-enabled").exists()
    assert not (root / "etc/nginx/sites-available").exists()


@pytest.mark.system
def test_on_a_debian_layout_the_site_is_enabled_in_sites_enabled(
    tmp_path: Path, vkit_bin: Path
) -> None:
    root = host_root(tmp_path, DEBIAN_NGINX_CONF)
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    enabled = root / "etc/nginx/sites-enabled/vkit.conf"
    assert enabled.resolve() == (root / "etc/nginx/sites-available/vkit.conf").resolve()
    assert not (root / "etc/nginx/conf.d/vkit.conf").exists()


@pytest.mark.system
def test_an_nginx_conf_that_includes_neither_is_refused(tmp_path: Path, vkit_bin: Path) -> None:
    root = host_root(tmp_path, RHEL_NGINX_CONF.replace("include /etc/nginx/conf.d/*.conf;", ""))
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nginx.conf" in result.stderr, result.stderr
    assert not (root / "etc/vkit").exists()
    assert sorted(p.name for p in (root / "etc/nginx").iterdir()) == [
        "conf.d", "mime.types", "nginx.conf"
    ]  # fmt: skip


def nginx_dump(root: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -T`` of the staged tree as the host would run it: the staged /etc laid over
    the host's (a read-only overlay) in a private mount namespace, since the includes and the
    edge site's certificate paths (/etc/vkit/tls) are absolute."""
    nginx = nginx_binary()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    overlay = f"mount -t overlay overlay -o lowerdir={root / 'etc'}:/etc /etc"
    script = f"{overlay} && {nginx} -T -q -e {root}/error.log"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.system
def test_nginx_loads_the_site_on_a_rhel_layout(tmp_path: Path, vkit_bin: Path) -> None:
    """``nginx -t`` passes whether or not the site is included; ``nginx -T`` shows whether it
    is: the rendered upstream and server are part of the configuration NGINX loads."""
    root = host_root(tmp_path, RHEL_NGINX_CONF.replace("user nginx;", ""))
    result = install(root, vkit_bin, "--gpus", "0,1", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    dump = nginx_dump(root)
    assert dump.returncode == 0, dump.stderr
    assert "# configuration file /etc/nginx/conf.d/vkit.conf:" in dump.stdout
    assert "# configuration file /etc/nginx/conf.d/vkit-edge.conf:" in dump.stdout
    assert "upstream vkit_replicas {" in dump.stdout
    assert "listen 127.0.0.1:8000;" in dump.stdout
