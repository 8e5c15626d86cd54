"""The floors of the kit run one way, and every import is one an import graph can see.

Why: ``vkit/`` (the CLI, ``vkit up``, rendering) sits on top of ``launcher/`` and ``gateway/``,
which sit on top of the data (``configs/``, ``nginx/``). When a lower floor imports the CLI,
the CLI cannot import it without a cycle, domain code starts to speak in exit codes, and the
gateway's container image has to carry the whole kit. When a module is imported by a string
(``importlib.import_module("...")``, ``__import__``) or found through ``sys.path`` edits, no
tool -- mypy, ruff, an IDE, this test -- sees the edge, so such cycles hide there. The
gateway may use exactly one launcher module: the vLLM readiness rule, which the gateway's
prober, ``vkit launch``'s sd_notify and ``vkit up`` share so that "ready" means one thing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "gateway", "vkit")
SCANNED = (*PACKAGES, "bench")

# package -> the packages of the kit it must not import (anything under them).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "launcher": ("vkit", "gateway"),
    "gateway": ("vkit", "launcher"),
}
# The needs that justify an edge across the middle floor: importer package -> modules.
ALLOWED: dict[str, tuple[str, ...]] = {
    "gateway": ("launcher.supervision.readiness",),
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _by_string(node: ast.AST) -> str | None:
    """``importlib.import_module(...)``, ``import_module(...)``, ``__import__(...)``,
    ``sys.path.insert/append/extend(...)`` or ``sys.path = ...``."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__"):
            return f"imports by string ({name})"
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("insert", "append", "extend")
            and ast.unparse(func.value) == "sys.path"
        ):
            return "edits sys.path"
    if isinstance(node, ast.Assign) and any(ast.unparse(t) == "sys.path" for t in node.targets):
        return "edits sys.path"
    return None


def find_violations(root: Path, scanned: tuple[str, ...] = SCANNED) -> Iterator[Violation]:
    """Every import in ``root``'s packages that breaks the rules in the module docstring."""
    for folder in scanned:
        for path in sorted((root / folder).rglob("*.py")):
            relative = str(path.relative_to(root))
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
            for node in ast.walk(tree):
                why = _by_string(node)
                if why is not None:
                    yield Violation(relative, getattr(node, "lineno", 0), why)
                for module in _imported(node):
                    for banned in FORBIDDEN.get(folder, ()):
                        allowed = ALLOWED.get(folder, ())
                        if _under(module, banned) and module not in allowed:
                            yield Violation(relative, node.lineno, f"{folder}/ imports {module}")


def test_the_kit_keeps_its_floors() -> None:
    assert [str(v) for v in find_violations(ROOT)] == []


@pytest.mark.parametrize(
    ("folder", "source", "expected"),
    [
        (
            "launcher",
            "from vkit.exit_codes import UsageError\n",
            "launcher/ imports vkit.exit_codes",
        ),
        ("gateway", "import vkit\n", "gateway/ imports vkit"),
        ("gateway", "from launcher.sizing.fit import plan_fit\n", "gateway/ imports launcher"),
        ("launcher", "from gateway.settings import X\n", "launcher/ imports gateway.settings"),
        ("vkit", "import importlib\nimportlib.import_module('launcher.x')\n", "imports by string"),
        ("vkit", "__import__('gateway')\n", "imports by string (__import__)"),
        ("bench", "import sys\nsys.path.insert(0, '..')\n", "edits sys.path"),
    ],
)
def test_the_check_catches_each_kind_of_breach(
    tmp_path: Path, folder: str, source: str, expected: str
) -> None:
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "bad.py").write_text(source)
    found = [v.what for v in find_violations(tmp_path, (folder,))]
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_one_allowed_edge_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "ok.py").write_text(
        "from launcher.supervision.readiness import ReadinessCheck\nfrom vkit import cli\n"
    )
    assert [v.what for v in find_violations(tmp_path, ("gateway",))] == ["gateway/ imports vkit"]


def test_module_names_are_unique() -> None:
    """File names say what they hold: one ``plan.py``, one ``readiness.py`` ... The only
    repeats allowed are ``__init__`` and each package's own ``errors``."""
    seen: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    repeated = {
        name: paths
        for name, paths in seen.items()
        if len(paths) > 1 and name not in ("__init__", "errors")
    }
    assert repeated == {}
