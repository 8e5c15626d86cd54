"""Is a rendered compose bundle complete? Every file the compose file names is in it.

:func:`bundle_problems` reads ``compose.yaml`` in a bundle directory and lists, one line
each, what ``docker compose up`` would find missing there: a bind-mount source that is not
in the bundle (Docker would create an empty directory in its place), one of the wrong kind
(a file mounted where a directory is, or the reverse), a path that leaves the bundle, a
build context or Dockerfile that is not there, a file the Dockerfile copies that the
context lacks, and a ``${VAR}`` that ``.env.example`` does not list with a comment.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

VARIABLE = re.compile(r"\$\{(\w+)")
IMAGE_REFERENCE = re.compile(r"\$\{(VKIT_\w+_IMAGE):-([^}]+)\}")


def image_default(reference: str) -> str:
    """The pinned image of a service's ``${VKIT_..._IMAGE:-image}`` reference."""
    match = IMAGE_REFERENCE.fullmatch(reference)
    assert match, f"not an image variable with a default: {reference}"
    return match.group(2)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """``(source, target)`` of each short-syntax volume whose source is a host path."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def wants_a_file(target: str) -> bool:
    """A container path with a suffix (``default.conf``, ``vllm_supervisor.py``) is a file."""
    return PurePosixPath(target).suffix != ""


def documented_variables(example: str) -> dict[str, bool]:
    """``VAR -> whether a comment line stands right above it`` for each ``VAR=`` line."""
    lines = example.splitlines()
    return {
        match.group(1): index > 0 and lines[index - 1].startswith("#")
        for index, line in enumerate(lines)
        if (match := re.match(r"^(\w+)=", line))
    }


def copied_sources(dockerfile: str) -> list[str]:
    """The sources of every ``COPY`` that does not copy from another stage."""
    sources = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def bundle_problems(root: Path) -> list[str]:
    problems = []
    text = (root / "compose.yaml").read_text()
    compose: dict[str, Any] = yaml.safe_load(text)
    for name, service in compose["services"].items():
        for source, target in bind_mounts(service):
            path = PurePosixPath(source)
            if path.is_absolute() or ".." in path.parts:
                problems.append(f"{name}: {source} is outside the bundle")
                continue
            on_disk = root / source
            if not on_disk.exists():
                problems.append(f"{name}: {source} is not in the bundle")
            elif wants_a_file(target) != on_disk.is_file():
                kind = "a file" if wants_a_file(target) else "a directory"
                problems.append(f"{name}: {source} is not {kind} (mounted at {target})")
        build = service.get("build")
        if build is None:
            continue
        context = PurePosixPath(build["context"] if isinstance(build, dict) else build)
        if context.is_absolute() or ".." in context.parts:
            problems.append(f"{name}: build context {context} is outside the bundle")
            continue
        dockerfile = root / context / (build.get("dockerfile", "Dockerfile"))
        if not dockerfile.is_file():
            problems.append(f"{name}: no Dockerfile at {dockerfile.relative_to(root)}")
            continue
        for source in copied_sources(dockerfile.read_text()):
            if not (root / context / source).exists():
                problems.append(f"{name}: the Dockerfile copies {source}, not in {context}")
    example = root / ".env.example"
    documented = documented_variables(example.read_text()) if example.is_file() else {}
    for variable in sorted(set(VARIABLE.findall(text))):
        if variable not in documented:
            problems.append(f".env.example does not list {variable}")
        elif not documented[variable]:
            problems.append(f".env.example has no comment above {variable}")
    return problems
