"""The gateway image holds what the gateway imports and nothing more, within a stated size.

No Docker engine runs here, so the slow test (marker ``packaging``) plays the Dockerfile's build
stage on this machine: its ``WORKDIR``/``COPY`` lines copy the same files out of a freshly
rendered compose bundle's build context (``build/gateway/``),
its ``RUN`` line runs as written with the pip of a fresh venv (which, like
``python:3.11-slim``, holds only pip and setuptools) and ``/install`` pointed at a temporary
prefix. That prefix is what the final stage copies into ``/usr/local``: its bytes are the
image's share, and ``vkit gateway``, the image's command, must start from it.

Budget: 70 MiB. The gateway's requirements install to 68.3 MiB (fastapi, pydantic, aiohttp,
redis, tokenizers, ...; uvloop is 13.6 MiB of it, its wheel's shared object keeps its debug
symbols, and with httptools saves 40-60% of the gateway's CPU per request), which leaves
little for upgrades; tokenizers' huggingface_hub chain (+25 MiB) or matplotlib with numpy,
PIL and fontTools (~170 MB) coming back breaks it.

What the image installs is derived, not written twice: ``vkit/render/gateway-requirements.txt``
is the part of ``requirements.lock`` (pyproject's ranges, resolved) that pyproject's
dependencies pull, less :data:`NOT_IN_THE_IMAGE` and what :data:`WITHOUT_THEIR_OWN` would pull,
each at its locked version; the Dockerfile installs it with ``--no-deps``. A fast test checks the
file against that derivation; ``python -m tests.deploy.test_gateway_image`` prints it anew.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_packaging import clean_env, lock_pins, must, run
from vkit.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# Package data of vkit.render, copied into each compose bundle's build/gateway/ (the context).
DOCKERFILE = ROOT / "vkit" / "render" / "gateway.Dockerfile"
BUDGET_BYTES = 70 * 2**20
# Importable in the image means installed there for nothing: the gateway imports none of them.
ABSENT = ("matplotlib", "numpy", "PIL", "fontTools", "huggingface_hub", "vllm", "torch", "httpx")
REQUIREMENTS = ROOT / "vkit" / "render" / "gateway-requirements.txt"
LOCK = ROOT / "requirements.lock"
# pyproject's dependencies the gateway never imports: httpx serves the kit's blocking readiness
# probe (launcher/supervision/readiness_probe.py), vkit up and vkit capacity's Prometheus reads.
NOT_IN_THE_IMAGE = frozenset({"httpx"})
# Installed without their own requirements: tokenizers' one, huggingface_hub (with hf-xet,
# fsspec, httpx, tqdm: ~26 MB), serves Tokenizer.from_pretrained's downloads; the gateway reads
# tokenizer.json files (Tokenizer.from_file).
WITHOUT_THEIR_OWN = frozenset({"tokenizers"})
HEADER = """\
# The gateway image's packages, each at requirements.lock's version; installed with --no-deps.
# Generated (python -m tests.deploy.test_gateway_image > vkit/render/gateway-requirements.txt)
# from pyproject's dependencies less httpx, tokenizers without huggingface_hub: see
# tests/deploy/test_gateway_image.py, which checks this file.
"""


def build_stage(dockerfile: str) -> list[tuple[str, str]]:
    """The first stage's instructions as ``(KEYWORD, arguments)``, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM" and any(k == "FROM" for k, _ in instructions):
            break  # the second stage (an ARG before the first FROM names the base)
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def pyproject_dependencies() -> set[str]:
    """The names of pyproject's ``[project] dependencies``, normalized."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        listed = tomllib.load(f)["project"]["dependencies"]
    return {canonicalize_name(Requirement(line).name) for line in listed}


def lock_parents(text: str) -> dict[str, set[str]]:
    """``name -> the packages it is locked for`` from the lock's ``# via`` notes."""
    parents: dict[str, set[str]] = {}
    name = ""
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            name = canonicalize_name(line.partition("==")[0])
            parents[name] = set()
        elif name and line.strip().startswith("#") and "via" not in line:
            parents[name].add(canonicalize_name(line.strip("# ").split(" ")[0]))
        elif name and line.strip().startswith("# via "):
            parents[name].add(canonicalize_name(line.split("# via ")[1].split(" ")[0]))
    return parents


def gateway_requirements() -> str:
    """The file ``gateway-requirements.txt`` must hold: the gateway's part of the lock."""
    lock = LOCK.read_text()
    pins, parents = lock_pins(lock), lock_parents(lock)
    wanted = pyproject_dependencies() - NOT_IN_THE_IMAGE
    grown = True
    while grown:  # everything a wanted package pulls, except through WITHOUT_THEIR_OWN
        pulled = {
            name
            for name, by in parents.items()
            if name not in wanted and by & (wanted - WITHOUT_THEIR_OWN)
        }
        grown = bool(pulled)
        wanted |= pulled
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(wanted))


def test_the_image_installs_the_gateways_part_of_the_lock() -> None:
    """The requirements file is derived from pyproject and the lock, and the build stage
    installs it and the kit, both with ``--no-deps``: nothing unlocked gets in."""
    assert REQUIREMENTS.read_text() == gateway_requirements(), (
        "regenerate: python -m tests.deploy.test_gateway_image > " + str(REQUIREMENTS.name)
    )
    runs = [a for keyword, a in build_stage(DOCKERFILE.read_text()) if keyword == "RUN"]
    installs = [shlex.split(c) for run in runs for c in run.split("&&") if "pip install" in c]
    assert installs and all("--no-deps" in words for words in installs)
    named = {w for words in installs for w in words[2:] if not w.startswith("-")}
    assert named == {REQUIREMENTS.name, "."}


def test_every_install_gets_the_fast_event_loop_and_parser() -> None:
    """uvloop and httptools (40-60% less CPU per request, docs/gateway-cost.md) come with every
    way the gateway is installed: the wheel's dependencies (``pip install vkit``, which the
    systemd host's venv and ``vkit up`` run from) and the image's requirements."""
    from vkit.commands.gateway import FAST_PARTS

    image = {canonicalize_name(Requirement(line).name) for line in _requirement_lines()}
    assert set(FAST_PARTS) <= pyproject_dependencies()
    assert set(FAST_PARTS) <= image


def _requirement_lines() -> list[str]:
    lines = (line.strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_build_context_holds_every_package_of_the_kit() -> None:
    """The context copies the packages pyproject installs, each from where it is installed
    (the compose bundle's check, tests/deploy/bundle_check.py, finds every COPY source)."""
    from vkit.render.gateway_build import KIT_PACKAGES, SHIPPED_SUFFIXES

    with (ROOT / "pyproject.toml").open("rb") as f:
        table = tomllib.load(f)["tool"]["setuptools"]
    assert list(KIT_PACKAGES) == table["packages"]
    patterns = [p for patterns in table["package-data"].values() for p in patterns]
    assert {Path(pattern).suffix for pattern in patterns} <= SHIPPED_SUFFIXES


def render_context(out: Path) -> Path:
    """A compose bundle rendered into ``out``: its gateway build context."""
    from vkit.cli import main

    argv = ["render", "compose", "--gpu", "rtx4090", "--gpus", "0", "--model", "llama-3.1-8b"]
    assert main([*argv, "--quant", "awq", "--out", str(out / "compose.yaml")]) == 0
    return out / "build" / "gateway"


def play_build_stage(
    stage: list[tuple[str, str]], context: Path, root: Path, prefix: Path, pip_env: dict[str, str]
) -> None:
    """``WORKDIR`` and ``COPY`` (from ``context``) under ``root`` (the build container's
    ``/``), ``RUN`` as written with ``/install`` -> ``prefix``."""
    workdir = root
    for keyword, arguments in stage:
        if keyword == "WORKDIR":
            workdir = root / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = arguments.split()
            target = workdir / dest
            for source in sources:
                origin = context / source
                into = target / origin.name if dest.endswith("/") else target
                if origin.is_dir():
                    ignored = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(origin, into, ignore=ignored)
                else:
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, into)
        elif keyword == "RUN":
            command = arguments.replace("/install", str(prefix))
            must(run(["bash", "-c", command], cwd=workdir, env=pip_env, timeout=600))
        else:
            assert keyword in ("ARG", "FROM"), f"the simulation does not know {keyword}"


def installed_bytes(prefix: Path) -> int:
    return sum(path.stat().st_size for path in prefix.rglob("*") if path.is_file())


def write_tokenizer(model_dir: Path) -> None:
    """A tiny model directory: tokenizer.json and a chat template, as the gateway reads them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    model_dir.mkdir()
    tokenizer.save(str(model_dir / "tokenizer.json"))
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))


PROBE = """
import importlib, importlib.util, json, pkgutil
import gateway
for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
    importlib.import_module(module.name)
import redis.asyncio, tokenizers, uvicorn, vkit.cli  # the gateway's lazy imports, its CLI
print(json.dumps({
    "gateway": gateway.__file__,
    "present": [name for name in %r if importlib.util.find_spec(name) is not None],
}))
"""


@pytest.mark.system
def test_gateway_image_install_is_small_and_serves(tmp_path: Path) -> None:
    started = time.monotonic()
    base_python = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "venv"
    must(run([base_python, "-m", "venv", venv], cwd=tmp_path, timeout=120))
    env = clean_env(venv)
    prefix = tmp_path / "install"
    context = render_context(tmp_path / "bundle")
    stage = build_stage((context / "Dockerfile").read_text())
    play_build_stage(stage, context, tmp_path / "build", prefix, env)
    installed = time.monotonic()

    size = installed_bytes(prefix)
    assert size < BUDGET_BYTES, (
        f"{size / 2**20:.1f} MiB installed, budget {BUDGET_BYTES / 2**20:.0f}"
    )

    (site,) = prefix.glob("lib/python3*/site-packages")
    env["PYTHONPATH"] = str(site)  # in the image: /usr/local's site-packages
    probe = must(
        run([venv / "bin" / "python", "-c", PROBE % (ABSENT,)], cwd=tmp_path, env=env, timeout=120)
    )
    where = json.loads(probe.stdout)
    assert Path(where["gateway"]).resolve().is_relative_to(site.resolve())
    assert where["present"] == []

    # The image's command, from the prefix, with a tokenizer to load.
    write_tokenizer(tmp_path / "model")
    port = free_port()
    env |= {
        "VKIT_GATEWAY_PORT": str(port),
        "VKIT_GATEWAY_ALLOW_ANONYMOUS": "true",
        "VKIT_GATEWAY_TOKENIZERS__MODELS": json.dumps({"tiny": str(tmp_path / "model")}),
    }
    gateway = subprocess.Popen(
        [prefix / "bin" / "vkit", "gateway"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and gateway.poll() is None and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        gateway.terminate()
        output, _ = gateway.communicate(timeout=30)
    assert status == 200, output
    assert "Traceback" not in output
    assert "byte bound" not in output, output  # the tokenizer loaded
    # uvicorn's fast loop and parser (40-60% less CPU per request: docs/gateway-cost.md)
    assert "event loop uvloop, HTTP parser httptools" in output, output

    print(
        f"\ngateway image: {size / 2**20:.1f} MiB installed (budget {BUDGET_BYTES / 2**20:.0f}), "
        f"install {installed - started:.1f} s"
    )


if __name__ == "__main__":
    print(gateway_requirements(), end="")
