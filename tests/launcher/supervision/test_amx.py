"""AMX: every Python process of the CPU engine asks Linux for AMX tile state first.

vLLM 0.32's CPU worker dies on AMX CPUs when the engine's first request has a tiny prompt
(docs/cpu-engine.md#amx-cpus); asking for the tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``) in every process first cures it. The permission does not survive
``execve`` and vLLM starts its workers with multiprocessing, so ``vkit launch --cpu`` puts
a ``sitecustomize`` directory first on the engine's ``PYTHONPATH``; these tests run real
``python`` children under that environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.supervision.launch_spec import LaunchSettings, engine_process_env, resolve_launch

ARCH_GET_XCOMP_PERM = 0x1022
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158


def cpu_has_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


needs_amx = pytest.mark.skipif(
    not cpu_has_amx(), reason="no amx_tile in /proc/cpuinfo: this CPU has no AMX tile state"
)

# Run in a child: which sitecustomize ran, and does this process hold the AMX permission?
REPORT = """
import ctypes, sys
mask = ctypes.c_ulong(0)
libc = ctypes.CDLL(None, use_errno=True)
ok = libc.syscall(158, 0x1022, ctypes.byref(mask)) == 0
print(sys.modules["sitecustomize"].__file__ if "sitecustomize" in sys.modules else "-")
print(int(ok and bool(mask.value & (1 << 18))))
"""
# A multiprocessing "spawn" child (how vLLM may start its workers) reports; with
# ``--subprocess`` that child reports through a subprocess of its own (one more exec).
SPAWNED = f"""
import multiprocessing, subprocess, sys

def child(again):
    if again:
        subprocess.run([sys.executable, "-c", {REPORT!r}], check=True)
    else:
        exec({REPORT!r})

if __name__ == "__main__":
    again = "--subprocess" in sys.argv
    process = multiprocessing.get_context("spawn").Process(target=child, args=(again,))
    process.start()
    process.join()
    sys.exit(process.exitcode)
"""


def cpu_engine_env() -> dict[str, str]:
    spec = resolve_launch(
        LaunchSettings(model="qwen3-4b", max_model_len=512), gpu_visible=False, engine=["x"]
    )
    return engine_process_env(os.environ, spec.env)


def run_python(code: str, env: dict[str, str], cwd: Path, *args: str) -> list[str]:
    """Run ``code`` as a script file (spawn needs one) in ``cwd``; its stdout's words."""
    script = cwd / "check.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script), *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.integration
def test_the_cpu_engine_environment_runs_the_amx_request_in_every_python(
    tmp_path: Path,
) -> None:
    env = cpu_engine_env()
    site_dir = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (site_dir / "sitecustomize.py").is_file()
    module, _ = run_python(REPORT, env, tmp_path)
    assert Path(module) == site_dir / "sitecustomize.py"
    spawned = run_python(SPAWNED, env, tmp_path)
    assert Path(spawned[0]) == site_dir / "sitecustomize.py"  # a spawned worker too


def test_gpu_launches_leave_pythonpath_alone() -> None:
    spec = resolve_launch(
        LaunchSettings(model="8b", gpu="rtx4090", quant="awq"), gpu_visible=True, engine=["x"]
    )
    assert "PYTHONPATH" not in spec.env


@pytest.mark.integration
def test_the_callers_pythonpath_and_sitecustomize_still_apply(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    (theirs / "their_module.py").write_text("")
    base = {**os.environ, "PYTHONPATH": str(theirs)}
    spec = resolve_launch(
        LaunchSettings(model="qwen3-4b", max_model_len=512), gpu_visible=False, engine=["x"]
    )
    env = engine_process_env(base, spec.env)
    code = "import os, their_module; print(os.environ.get('THEIRS_RAN', '0'))"
    assert run_python(code, env, tmp_path) == ["1"]


@pytest.mark.integration
@needs_amx
def test_every_engine_process_holds_the_amx_permission(tmp_path: Path) -> None:
    _, without = run_python(REPORT, dict(os.environ), tmp_path)
    assert without == "0"  # Linux grants it only on request, and not across exec
    env = cpu_engine_env()
    assert run_python(REPORT, env, tmp_path)[1] == "1"
    assert run_python(SPAWNED, env, tmp_path)[1] == "1"  # a spawned worker
    assert run_python(SPAWNED, env, tmp_path, "--subprocess")[1] == "1"  # and its children


def test_the_request_is_harmless_without_amx() -> None:
    """On any CPU the request returns (0 with AMX, an error without); nothing raises."""
    from launcher.supervision.amx_site.sitecustomize import request_amx_permission

    assert request_amx_permission() is cpu_has_amx()
