"""Each package's docstring is the map of its modules, and the README's layout is the tree's.

Why: a maintainer finds a module by reading its package's ``__init__.py`` docstring, one line
per module and sub-package; the README's "Layout" section names every package and folder and
points there instead of listing modules (so it cannot drift). A module added without its line,
or a folder the README does not name, fails here with every missing name in one message.

A module counts as named when its name appears as a module reference, a whole word: after a
``.`` or a backtick (``:mod:`.router```, ``vkit.render.compose``, ``:mod:`sitecustomize```),
or followed by ``.py`` or ``/`` (``usage.py``, ``capacity/``). ``compose`` inside
``compose_services`` does not count, nor does ``client`` in a sentence about "the client".

The tree is walked, not asked of git: the unit tier starts no process.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("launcher", "gateway", "vkit")
# The repository's own top-level folders (hidden ones, such as .ci, and build output aside).
NOT_PROJECT = ("__pycache__", "build", "dist")


def named(name: str, text: str) -> bool:
    """Whether ``text`` names the module or package ``name`` as a reference (see above)."""
    word = re.escape(name)
    return (
        re.search(rf"[.`]{word}(?!\w)", text) is not None
        or re.search(rf"(?<![\w.]){word}(?:\.py\b|/)", text) is not None
    )


def packages() -> list[Path]:
    """Every package directory (one with an ``__init__.py``) under the code packages."""
    found = []
    for top in CODE_PACKAGES:
        for folder, folders, files in os.walk(ROOT / top):
            folders[:] = sorted(name for name in folders if name != "__pycache__")
            if "__init__.py" in files:
                found.append(Path(folder))
    return found


def members(package: Path) -> list[str]:
    """The modules (``name.py``) and sub-packages of one package, by name."""
    names = []
    for entry in sorted(package.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.append(entry.name)
        elif entry.suffix == ".py" and entry.name not in ("__init__.py", "__main__.py"):
            names.append(entry.stem)
    return names


def docstring(package: Path) -> str:
    source = (package / "__init__.py").read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)) or ""


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert match is not None, "README.md has no '## Layout' section"
    return match.group(1)


def test_the_walk_finds_the_packages() -> None:
    relative = {package.relative_to(ROOT).as_posix() for package in packages()}
    assert {"gateway", "gateway/routing", "launcher/sizing/capacity", "vkit/render"} <= relative


def test_named_is_a_whole_module_reference() -> None:
    assert named("router", "- :mod:`.router` -- the decision")
    assert named("usage", "usage.py    the traffic model")
    assert named("compose", "- :mod:`vkit.render.compose` -- the file")
    assert named("capacity", "see ``sizing/capacity/``")
    assert not named("compose", "- :mod:`vkit.render.compose_services` -- Redis")
    assert not named("client", "the client's JSON body")
    assert not named("load", "aware of load and prompt prefix")


def test_every_module_is_in_its_package_docstring() -> None:
    missing = [
        f"{package.relative_to(ROOT).as_posix()}/{name}"
        for package in packages()
        for name in members(package)
        if not named(name, docstring(package))
    ]
    assert not missing, (
        "modules missing from their package's docstring (add one line each to its "
        f"__init__.py): {', '.join(missing)}"
    )


def test_the_readme_layout_names_every_package_and_folder() -> None:
    layout = layout_section()
    wanted = [f"{package.relative_to(ROOT).as_posix()}/" for package in packages()]
    wanted += [
        f"{entry.name}/"
        for entry in sorted(ROOT.iterdir())
        if entry.is_dir()
        and not entry.name.startswith(".")
        and entry.name not in NOT_PROJECT
        and not entry.name.endswith(".egg-info")
    ]
    missing = [path for path in wanted if f"`{path}`" not in layout]
    assert not missing, f"README.md's Layout section does not name: {', '.join(missing)}"
