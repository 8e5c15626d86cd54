"""The compose gateway sees a key added on the host: the keys *directory* is bind-mounted.

``vkit keys add`` replaces keys.yaml (a new inode). A gateway process in its own mount
namespace (``unshare -m``, as a container has) sees the host's file through a bind mount laid
out as the rendered compose file says, and runs the gateway's own key reload
(``gateway.assembly.build_key_store``). Through a mount of the directory the new key works
within the reload time; through a mount of the file itself (what compose did before) it
never does.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.key_store import KeyStore
from gateway.keyfile import add_key

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker"
_DEFAULTS = inspect.signature(KeyStore.__init__).parameters
RELOAD_S = _DEFAULTS["check_interval"].default * 2 + _DEFAULTS["settle_time"].default
WAIT_S = RELOAD_S + 3.0  # what the test waits for a key; the bound asserted is RELOAD_S + 1

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="bind mounts in a new mount namespace need root and util-linux's unshare",
)

# The gateway's key reload, as the gateway builds it; one secret per stdin line, answered
# "found SECONDS" once it authenticates or "missing" after WAIT_S.
GATEWAY_SIDE = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from prometheus_client import CollectorRegistry
    from gateway.assembly import build_key_store
    from gateway.metrics import GatewayMetrics
    from gateway.settings import load_settings

    async def main(path, wait_s):
        settings = load_settings(environ={}, keys_file=Path(path))
        store = build_key_store(settings, GatewayMetrics(CollectorRegistry()))
        task = asyncio.create_task(store.run_forever())
        print("ready", len(store.keys), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            start = time.monotonic()
            while store.authenticate(line.strip()) is None:
                if time.monotonic() - start > wait_s:
                    print("missing", flush=True)
                    break
                await asyncio.sleep(0.05)
            else:
                print(f"found {time.monotonic() - start:.2f}", flush=True)
        task.cancel()

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


def gateway_mounts() -> tuple[str, str, str]:
    """(host side, container side, keys file) of the rendered gateway's keys mount."""
    compose: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    keys_file = gateway["environment"]["VKIT_GATEWAY_KEYS_FILE"]
    mounts = [volume.rsplit(":", 2) for volume in gateway["volumes"]]
    ((source, target, mode),) = [m for m in mounts if Path(keys_file).is_relative_to(m[1])]
    assert mode == "ro"
    return source, target, keys_file


@contextmanager
def gateway_process(source: Path, target: Path, keys_file: Path) -> Iterator[subprocess.Popen[str]]:
    """The gateway side in its own mount namespace, ``source`` bound on ``target``."""
    script = f"mount --bind -o ro {source} {target} 2>/dev/null || mount --bind {source} {target}"
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    argv += [f'{script} && exec "$0" "$@"', sys.executable, "-c", GATEWAY_SIDE]
    argv += [str(keys_file), str(WAIT_S)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VKIT_GATEWAY_")}
    env["PYTHONPATH"] = str(DOCKER_DIR.parents[1])
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def ask(proc: subprocess.Popen[str], secret: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(secret + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()
    if not line:
        pytest.fail(f"the gateway side did not start: {proc.stderr.read()}")
    return line


def test_the_rendered_gateway_mounts_the_directory_of_its_keys_file() -> None:
    source, target, keys_file = gateway_mounts()
    assert source.startswith("${VKIT_KEYS_DIR:?")
    assert Path(keys_file).parent == Path(target)


@pytest.mark.system
def test_a_key_added_on_the_host_reaches_the_gateway_through_the_directory_mount(
    tmp_path: Path,
) -> None:
    _, target, keys_file = gateway_mounts()
    host = tmp_path / "host-keys"
    host.mkdir()
    first = add_key(host / Path(keys_file).name, "alice")
    root = tmp_path / "container"
    (root / target.lstrip("/")).mkdir(parents=True)
    inode = (host / Path(keys_file).name).stat().st_ino
    seen = root / keys_file.lstrip("/")
    with gateway_process(host, root / target.lstrip("/"), seen) as proc:
        assert first_line(proc) == "ready 1"
        assert ask(proc, first).startswith("found")
        second = add_key(host / Path(keys_file).name, "bob")  # what `vkit keys add` does
        assert (host / Path(keys_file).name).stat().st_ino != inode  # a new file
        answer = ask(proc, second)
    assert answer.startswith("found"), answer
    assert float(answer.split()[1]) < RELOAD_S + 1.0, answer


@pytest.mark.system
def test_through_a_mount_of_the_file_itself_the_new_key_never_arrives(tmp_path: Path) -> None:
    """The defect the directory mount fixes (and the check above can fail)."""
    host = tmp_path / "host-keys"
    host.mkdir()
    add_key(host / "keys.yaml", "alice")
    seen = tmp_path / "container" / "keys.yaml"
    seen.parent.mkdir()
    seen.write_text("")
    with gateway_process(host / "keys.yaml", seen, seen) as proc:
        assert first_line(proc) == "ready 1"
        second = add_key(host / "keys.yaml", "bob")
        assert ask(proc, second) == "missing"
