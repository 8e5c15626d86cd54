"""The gateway image's build context, as files: what ``docker compose build`` builds from.

    >>> files = gateway_build_files("build/gateway")
    >>> sorted(f for f in files if not f.startswith("build/gateway/src/"))
    ['build/gateway/Dockerfile', 'build/gateway/gateway-requirements.txt',
     'build/gateway/pyproject.toml']

The context holds the kit as it is installed where ``vkit render compose`` runs: every
package of :data:`KIT_PACKAGES`, read through ``importlib.resources`` (so a wheel and a
checkout's editable install give the same tree) under ``src/``, with a ``pyproject.toml``
that installs them and the ``vkit`` command; the Dockerfile and the gateway's pinned
requirements (``gateway.Dockerfile``, ``gateway-requirements.txt``: package data of
``vkit.render``). Nothing outside the bundle is needed to build the image.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import PurePath

from vkit import __version__

DOCKERFILE = "gateway.Dockerfile"
REQUIREMENTS = "gateway-requirements.txt"
SOURCES = "src"
# pyproject's [tool.setuptools] packages (tests/deploy/test_gateway_image.py compares).
KIT_PACKAGES = (
    "launcher",
    "launcher.configs",
    "launcher.sizing",
    "launcher.sizing.capacity",
    "launcher.supervision",
    "launcher.supervision.amx_site",
    "gateway",
    "gateway.ledger",
    "gateway.limits",
    "gateway.routing",
    "vkit",
    "vkit.commands",
    "vkit.deployment",
    "vkit.monitoring",
    "vkit.nginx",
    "vkit.render",
    "vkit.stack",
)
# Modules, and the suffixes of pyproject's package-data: in a checkout, nothing else (editor
# files, caches) gets into the image.
SHIPPED_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".json", ".template", ".txt", ".Dockerfile"})


def package_files(package: str) -> dict[str, str]:
    """``path inside the package -> text`` of its modules and data, subpackages left out."""
    found: dict[str, str] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda entry: entry.name):
            if child.name.startswith((".", "__pycache__")):
                continue
            if child.is_dir():
                if not child.joinpath("__init__.py").is_file():  # a subpackage walks itself
                    walk(child, f"{prefix}{child.name}/")
            elif PurePath(child.name).suffix in SHIPPED_SUFFIXES:
                found[prefix + child.name] = child.read_text(encoding="utf-8")

    walk(files(package), "")
    return found


def kit_pyproject(data: dict[str, list[str]]) -> str:
    """Installs the packages under ``src/`` as they are, with ``data`` (package -> files)."""
    lines = [
        "# The kit's packages as installed where `vkit render compose` ran (src/); the",
        "# gateway image installs them with --no-deps (gateway-requirements.txt pins the rest).",
        "[build-system]",
        'requires = ["setuptools>=77"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        'name = "vkit"',
        f'version = "{__version__}"',
        'requires-python = ">=3.11"',
        "",
        "[project.scripts]",
        'vkit = "vkit.cli:main"',
        "",
        "[tool.setuptools]",
        f'package-dir = {{"" = "{SOURCES}"}}',
        "packages = [" + ", ".join(f'"{package}"' for package in KIT_PACKAGES) + "]",
        "",
        "[tool.setuptools.package-data]",
        *(
            f'"{package}" = [' + ", ".join(f'"{name}"' for name in names) + "]"
            for package, names in data.items()
            if names
        ),
    ]
    return "\n".join(lines) + "\n"


def gateway_build_files(context: str) -> dict[str, str]:
    """Every file of the build context, keyed by its path below ``context``'s parent."""
    render = files("vkit.render")
    built = {
        f"{context}/Dockerfile": render.joinpath(DOCKERFILE).read_text(encoding="utf-8"),
        f"{context}/{REQUIREMENTS}": render.joinpath(REQUIREMENTS).read_text(encoding="utf-8"),
    }
    data: dict[str, list[str]] = {}
    for package in KIT_PACKAGES:
        directory = package.replace(".", "/")
        contents = package_files(package)
        data[package] = sorted(name for name in contents if not name.endswith(".py"))
        for name, text in contents.items():
            built[f"{context}/{SOURCES}/{directory}/{name}"] = text
    built[f"{context}/pyproject.toml"] = kit_pyproject(data)
    return built
