"""``vkit gateway`` imports the gateway and what it needs, not the rest of the kit.

The gateway image runs ``vkit gateway``; :mod:`vkit.cli` imports a command's module only when
that command is chosen, so the gateway process never loads the fit solver, vLLM's launcher,
httpx (the blocking readiness probe), matplotlib or the Kubernetes tooling. Checked in a fresh
interpreter, where ``sys.modules`` holds only what this command line imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # each test starts a fresh interpreter

ROOT = Path(__file__).resolve().parents[2]

# Top-level modules (or the kit's sub-packages) the gateway's process must not import.
NOT_IN_THE_GATEWAY = (
    "httpx",
    "vllm",
    "torch",
    "transformers",
    "huggingface_hub",
    "matplotlib",
    "numpy",
    "kubernetes",
    "kubernetes_validate",
    "openai",
    "launcher.sizing",
    "launcher.supervision.readiness_probe",
    "launcher.supervision.launch_spec",
    "vkit.render",
    "vkit.stack",
    "vkit.commands.plan",
    "vkit.commands.launch",
    "vkit.commands.up",
    "vkit.commands.render",
    "vkit.commands.capacity",
)

PROBE = """
import contextlib, io, json, sys
import vkit.cli
with contextlib.redirect_stdout(io.StringIO()) as help_text:
    try:
        vkit.cli.main(["gateway", "--help"])
    except SystemExit:
        pass
import gateway.app, gateway.assembly, uvicorn  # what `vkit gateway` runs, once parsed
print(json.dumps({"modules": sorted(sys.modules), "help": help_text.getvalue()}))
"""


def imported_by(code: str) -> dict[str, object]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_vkit_gateway_imports_only_the_gateway() -> None:
    found = imported_by(PROBE)
    modules = set(found["modules"])  # type: ignore[call-overload]
    assert "usage: vkit gateway" in str(found["help"])
    assert "gateway.app" in modules
    loaded = sorted(
        name
        for name in modules
        if any(name == m or name.startswith(m + ".") for m in NOT_IN_THE_GATEWAY)
    )
    assert loaded == []


def test_vkit_help_still_lists_every_command() -> None:
    code = (
        "import contextlib, io, vkit.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: vkit.cli.main(['--help'])\n"
        "    except SystemExit: pass\n"
        "import json; print(json.dumps({'help': out.getvalue()}))\n"
    )
    text = str(imported_by(code)["help"])
    from vkit.cli import COMMANDS

    for name in COMMANDS:
        assert f"    {name} " in text or f"    {name}\n" in text, (name, text)
