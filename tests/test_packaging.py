"""The wheel carries the whole kit: every package, every data file, no extras it does not ask for.

pyproject lists its packages by hand (``[tool.setuptools] packages``) and maps two top-level
data folders into packages (``configs/`` -> ``launcher.configs``, ``nginx/`` -> ``vkit.nginx``).
setuptools copies into the wheel only what that list and ``package-data`` name: a package
missing from the list is missing from the wheel, and a data file no glob matches is left
behind. The editable install the tests run from does not notice either (it imports from the
checkout), so a wheel that cannot plan a GPU would pass every other test here.

- the fast test compares pyproject's lists with the directories and data files on disk;
- another checks ``requirements.lock`` (the exact versions ``make install``, CI and the gateway
  image install) against pyproject: every requirement pinned, each pin inside its range;
- the slow one (marker ``packaging``) builds the wheel, installs it into a fresh venv without
  extras, and runs the ``vkit`` console script from outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CODE_ROOTS = ("launcher", "gateway", "vkit")
# The data folders and the packages the code reads them as (launcher/config_files.py,
# vkit/nginx_conf.py, through importlib.resources).
DATA_PACKAGES = {
    "launcher.configs": "configs",
    "vkit.nginx": "nginx",
    "vkit.monitoring": "deploy/monitoring",  # rules + dashboard: vkit render k8s reads them
}


def setuptools_table() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["tool"]["setuptools"]
    return table


def package_directory(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools takes ``package`` from: its longest mapped prefix, else its dotted path."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:cut]))
        if mapped is not None:
            return ROOT.joinpath(mapped, *parts[cut:])
    return ROOT.joinpath(*parts)


def packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    """Every directory holding an ``__init__.py``, named as it is imported once installed."""
    tops = {top: top for top in CODE_ROOTS} | {pkg: folder for pkg, folder in package_dir.items()}
    found = set()
    for name, folder in tops.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_and_data_file_is_in_pyproject() -> None:
    table = setuptools_table()
    listed = set(table["packages"])
    package_dir: dict[str, str] = table.get("package-dir", {})
    for package, folder in DATA_PACKAGES.items():
        assert package_dir.get(package) == folder, f"{folder}/ must be installed as {package}"

    # Python files in a directory without __init__.py would be skipped as well.
    for top in CODE_ROOTS:
        for source in (ROOT / top).rglob("*.py"):
            assert (source.parent / "__init__.py").is_file(), f"no __init__.py beside {source}"

    on_disk = packages_on_disk(package_dir)
    assert sorted(on_disk - listed) == [], "packages missing from [tool.setuptools] packages"
    for package in listed:
        directory = package_directory(package, package_dir)
        assert (directory / "__init__.py").is_file(), f"listed {package}: no {directory}"

    package_data: dict[str, list[str]] = table.get("package-data", {})
    assert set(package_data) <= listed, "package-data for a package that is not listed"
    matched: dict[str, set[Path]] = {
        package: {
            path
            for pattern in patterns
            for path in package_directory(package, package_dir).glob(pattern)
            if path.is_file()
        }
        for package, patterns in package_data.items()
    }
    configs = ROOT / "configs"
    expected_configs = {*configs.rglob("*.yaml"), *configs.rglob("*.json")}
    expected_nginx = set((ROOT / "nginx").glob("*.template"))
    assert expected_configs and expected_nginx
    assert matched.get("launcher.configs") == expected_configs
    assert matched.get("vkit.nginx") == expected_nginx
    monitoring = ROOT / "deploy" / "monitoring"
    expected_monitoring = {*monitoring.rglob("*.yml"), *monitoring.rglob("*.json")}
    assert expected_monitoring
    assert matched.get("vkit.monitoring") == expected_monitoring
    render = ROOT / "vkit" / "render"
    expected_render = {render / "gateway.Dockerfile", render / "gateway-requirements.txt"}
    assert matched.get("vkit.render") == expected_render  # the compose bundle's build context


def lock_pins(text: str) -> dict[str, str]:
    """``name -> version`` of each ``name==version`` line of a lock file (names normalized)."""
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_requirement_inside_its_range() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    extras = project["optional-dependencies"]
    required = [*project["dependencies"], *extras["dev"], *extras["plot"]]
    outside = []
    for line in required:
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
            outside.append(f"{line}: locked {pinned}")
    assert outside == [], "regenerate requirements.lock (its header has the command)"


# --- the wheel, installed ----------------------------------------------------------------


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a shell with only ``venv`` activated: nothing of the checkout's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def source_copy(dest: Path) -> Path:
    """The files pyproject builds from, copied out of the checkout.

    Building in the checkout would reuse its ``build/lib``: setuptools ships whatever is left
    there, so a package dropped from the list would still be in the wheel.
    """
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    table = pyproject["tool"]["setuptools"]
    folders = {package.split(".")[0] for package in table["packages"]}
    folders = (folders - set(table.get("package-dir", {}))) | set(table["package-dir"].values())
    dest.mkdir()
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy2(ROOT / name, dest / name)
    for folder in sorted(folders):
        shutil.copytree(
            ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return dest


# Run by the fresh venv's python with -I (no cwd, no PYTHON* variables, no user site).
PROBE = """
import importlib.util, json, sysconfig
from importlib.resources import files
import gateway, launcher, vkit
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "launcher": launcher.__file__,
    "vkit": vkit.__file__,
    "gateway": gateway.__file__,
    "gpus.yaml": str(files("launcher.configs") / "gpus.yaml"),
    "template": str(files("vkit.nginx") / "vkit.conf.template"),
    "matplotlib": importlib.util.find_spec("matplotlib") and "found",
}))
"""


@pytest.mark.system
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    build = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    must(run([sys.executable, *build, source_copy(tmp_path / "src")], cwd=tmp_path, timeout=300))
    (wheel,) = wheels.glob("vkit-*.whl")
    built = time.monotonic()

    # From the interpreter .venv was made from: the new venv starts with none of its packages.
    base_python = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "venv"
    must(run([base_python, "-m", "venv", venv], cwd=tmp_path, timeout=120))
    made = time.monotonic()
    env = clean_env(venv)
    python = venv / "bin" / "python"
    must(run([python, "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=env, timeout=600))
    installed = time.monotonic()

    # Imported from the fresh venv's site-packages, not through the checkout's editable install.
    where = json.loads(must(run([python, "-I", "-c", PROBE], cwd=tmp_path, timeout=60)).stdout)
    site = Path(where["purelib"]).resolve()
    assert site.is_relative_to(venv.resolve())
    for module in ("launcher", "vkit", "gateway", "gpus.yaml", "template"):
        path = Path(where[module]).resolve()
        assert path.is_relative_to(site), f"{module} at {path}, not in {site}"
        assert not path.is_relative_to(ROOT), f"{module} from the checkout: {path}"
    assert where["matplotlib"] is None, "matplotlib installed without the [plot] extra"

    def cli(command: str) -> subprocess.CompletedProcess[str]:
        return run([venv / "bin" / "vkit", *command.split()], cwd=tmp_path, env=env, timeout=60)

    plan = must(cli("plan --model llama-3.1-8b --gpu rtx4090 --quant awq --concurrency 16"))
    assert "FITS" in plan.stdout
    assert "max_model_len 7,168" in plan.stdout

    capacity = must(cli("capacity --users 1000"))
    assert "281" in capacity.stdout  # rtx4090, $/month

    compose = must(cli("render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b --quant awq"))
    services = yaml.safe_load(compose.stdout)["services"]
    vllm = [name for name in services if name.startswith("vllm")]
    assert vllm, sorted(services)
    assert all("vllm/vllm-openai:" in services[name]["image"] for name in vllm)

    # The one command that reads the NGINX template (vkit.nginx's package data) to stdout.
    nginx = must(cli("render nginx --upstream 127.0.0.1:8001 --listen 8000"))
    assert "127.0.0.1:8001" in nginx.stdout

    # Reads the alert rules and the dashboard (vkit.monitoring's package data).
    k8s = must(cli("render k8s --gpu rtx4090 --model llama-3.1-8b --quant awq"))
    kinds = {doc["kind"] for doc in yaml.safe_load_all(k8s.stdout) if doc}
    assert {"PrometheusRule", "StatefulSet", "ScaledObject"} <= kinds, sorted(kinds)

    must(cli("up --help"))

    # Without the [plot] extra: one line naming it, before any output, no chart.
    plot = cli("capacity --users 1000 --plot out.png")
    assert plot.returncode != 0
    assert "Traceback" not in plot.stdout + plot.stderr
    (line,) = plot.stderr.splitlines()
    assert "vkit[plot]" in line
    assert not (tmp_path / "out.png").exists()

    print(
        f"\npackaging: wheel {built - started:.1f} s, venv {made - built:.1f} s, "
        f"install {installed - made:.1f} s, commands {time.monotonic() - installed:.1f} s"
    )
