"""The compose quickstart's keys file is readable by the gateway image's unprivileged user.

``deploy/README.md``'s quickstart is run as written (its ``vkit render compose``, ``cd``,
``mkdir`` and ``vkit keys add`` lines, under a strict umask), then the gateway's key read
runs as the container will: the uid and gid the gateway's Dockerfile gives its user (not the
file's owner) and exactly the supplementary groups the rendered compose file's ``group_add``
gives it, with ``.env``'s values. A second ``vkit keys add`` (what the running gateway
reloads: a new file, replaced atomically) must stay readable the same way.

No Docker here: the directories above the keys directory, which the container never sees
(it gets the directory through a bind mount), are opened for the test's user.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "deploy" / "README.md"
RUN_AS_WRITTEN = ("vkit render compose", "cd ", "mkdir ", "vkit keys add")
LOAD = "import sys; from pathlib import Path; from gateway.keyfile import load_keys\n"
LOAD += "print(len(load_keys(Path(sys.argv[1]))))"

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="running as another user (setpriv) needs root"),
]


def quickstart() -> list[str]:
    """The compose section's first command block, continuation lines joined."""
    section = README.read_text().split("## A GPU box with Docker Compose", 1)[1]
    block = re.search(r"\n\n((?:    .*\n|\n)+)", section)
    assert block, "no command block in the compose section"
    text = re.sub(r"\\\n\s*", " ", block.group(1))
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip()]


def keys_lines(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("vkit keys add")]


def container_user(dockerfile: str) -> tuple[int, int]:
    """The uid and gid the image's ``useradd``/``groupadd`` give (999: Debian's first system
    uid, what an unnumbered ``--system`` user gets in python:3.11-slim)."""
    uid = re.search(r"useradd[^\n]*--uid (\d+)", dockerfile)
    gid = re.search(r"groupadd[^\n]*--gid (\d+)", dockerfile)
    return int(uid.group(1)) if uid else 999, int(gid.group(1)) if gid else 999


def env_values(bundle: Path) -> dict[str, str]:
    """``.env`` if the quickstart left one, else ``.env.example`` (the bundle's, or the
    committed example's for a render that writes none)."""
    found = [bundle / ".env", bundle / ".env.example", ROOT / "deploy/docker/.env.example"]
    env = next(path for path in found if path.is_file())
    return dict(re.findall(r"^(\w+)=(.*)$", env.read_text(), re.M))


def substitute(value: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: values[m.group(1)], value)


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory the container's user may traverse (as the mount lets it)."""
    path = Path(tempfile.mkdtemp(prefix="vkit-keys-user-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_quickstarts_keys_file_is_read_by_the_gateway_images_user(home: Path) -> None:
    commands = [c for c in quickstart() if c.startswith(RUN_AS_WRITTEN)]
    assert keys_lines(commands) and commands[0].startswith("vkit render compose")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(ROOT)
    script = "set -e; umask 077; " + "; ".join(commands)
    done = subprocess.run(
        ["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    render = shlex.split(commands[0])
    bundle = (home / render[render.index("--out") + 1]).parent
    for above in [bundle, *bundle.parents]:  # what the mount hides from the container
        if above.is_relative_to(home):
            above.chmod(above.stat().st_mode | 0o011)

    compose: dict[str, Any] = yaml.safe_load((bundle / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    build = gateway["build"]
    context = bundle / (build["context"] if isinstance(build, dict) else build)
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    uid, gid = container_user(dockerfile.read_text() if dockerfile.is_file() else "")
    values = env_values(bundle)
    groups = [substitute(str(g), values) for g in gateway.get("group_add", [])]
    keys_file = Path(gateway["environment"]["VKIT_GATEWAY_KEYS_FILE"])
    mounts = [volume.rsplit(":", 2) for volume in gateway["volumes"]]
    ((source, _, _),) = [m for m in mounts if m[1] == str(keys_file.parent)]
    host_keys = bundle / substitute(source, values) / keys_file.name
    assert host_keys.stat().st_uid != uid  # the container's user does not own the file

    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
    setpriv += [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]

    def read_as_container() -> subprocess.CompletedProcess[str]:
        argv = [*setpriv, sys.executable, "-c", LOAD, str(host_keys)]
        return subprocess.run(
            argv, env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False
        )

    first = read_as_container()
    assert first.returncode == 0 and first.stdout.strip() == "1", first.stderr
    # The running gateway reloads a file that `vkit keys add` replaced: still readable.
    again = keys_lines(commands)[0].replace("keys add ", "keys add second-", 1)
    moved = [c for c in commands if c.startswith("cd ")]
    script = f"umask 077; {'; '.join(moved)}; {again}"
    added = subprocess.run(
        ["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=60
    )
    assert added.returncode == 0, added.stderr
    second = read_as_container()
    assert second.returncode == 0 and second.stdout.strip() == "2", second.stderr


def test_a_keys_file_without_the_group_is_refused_to_the_container_user(home: Path) -> None:
    """The check above can fail: ``vkit keys add`` without ``--group`` (0600, the defect)."""
    keys = home / "keys"
    keys.mkdir(mode=0o750)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    add = [sys.executable, "-m", "vkit", "keys", "add", "team-a", "--file", str(keys / "k.yaml")]
    assert subprocess.run(add, env=env, capture_output=True, timeout=60).returncode == 0
    uid, gid = container_user("useradd --uid 10001\ngroupadd --gid 10001")
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={os.getgid()}"]
    argv += [sys.executable, "-c", LOAD, str(keys / "k.yaml")]
    read = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert read.returncode != 0 and "Permission denied" in read.stderr
