"""Every pointer into ``docs/`` lands on a heading, and nothing cites an outside document.

Why: code comments say where a fact comes from by pointing at a heading of the project's own
reference documents (``docs/memory.md#kv-cache-bytes-per-token``). A renamed heading or file
silently strands those pointers; this test names each stranded one. Comments that cite a
numbered section of a document kept outside the repository are refused too: a reader of the
project cannot follow them. Anchors are GitHub's: the heading lower-cased, punctuation other
than ``-`` and ``_`` dropped, spaces turned into ``-``, and ``-1``, ``-2``... on repeats.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# docs/<file>.md, optionally #<anchor>, not inside a longer path or URL (vendor/docs/x.md).
POINTER = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
# A relative link between the documents themselves: [text](memory.md#defaults).
RELATIVE_LINK = re.compile(r"\]\(([\w.-]+\.md)?(?:#([\w-]+))?\)")
# A numbered section of a document that is not in the repository.
OUTSIDE_CITATION = re.compile(r"REFERENCE(?:\s|#)+(?:section|§)")  # may wrap a line
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence or line.startswith("    ") else HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


# What .gitignore keeps out of the project (build output, caches, venvs), by path part.
IGNORED_PARTS = (".git", "__pycache__", "build", "dist", ".vkit")
IGNORED_SUFFIXES = (".egg-info", ".pyc", ".log")


def ignored(name: str) -> bool:
    return (
        name in IGNORED_PARTS
        or name.endswith(IGNORED_SUFFIXES)
        or name.startswith((".venv", ".pytest", ".mypy", ".ruff", ".hypothesis"))
    )


def tracked_files() -> list[Path]:
    """The project's own files, not build output (walked, not asked of git: the unit tier
    starts no process; ignored folders are not entered)."""
    found = []
    for folder, folders, files in os.walk(ROOT):
        folders[:] = [name for name in folders if not ignored(name)]
        found += [Path(folder, name) for name in files if not ignored(name)]
    return found


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:  # deleted in the work tree, still in the index
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def broken(target: str, anchor: str | None) -> str | None:
    """Why ``docs/<target>#<anchor>`` does not resolve, or None when it does."""
    path = DOCS / target
    if not path.is_file():
        return f"no file docs/{target}"
    if anchor and anchor not in anchors(path.read_text(encoding="utf-8")):
        return f"no heading #{anchor} in docs/{target}"
    return None


def test_slugs_follow_github() -> None:
    assert github_slug("KV cache bytes per token") == "kv-cache-bytes-per-token"
    assert github_slug("vLLM's NGINX example") == "vllms-nginx-example"
    assert github_slug("`--max-num-seqs` and max_model_len") == "--max-num-seqs-and-max_model_len"
    assert anchors("# A\n## Rules\n```\n# not a heading\n```\n### Rules\n") == {
        "a",
        "rules",
        "rules-1",
    }


def test_the_documents_link_to_each_other_correctly() -> None:
    problems = []
    for doc in sorted(DOCS.glob("*.md")):
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in RELATIVE_LINK.finditer(line):
                target = match.group(1) or doc.name
                why = broken(target, match.group(2))
                if why:
                    problems.append(f"docs/{doc.name}:{number}: {why}")
    assert problems == []


def test_every_pointer_into_docs_resolves_and_nothing_cites_an_outside_document() -> None:
    problems = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        name = path.relative_to(ROOT)
        for match in OUTSIDE_CITATION.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            problems.append(f"{name}:{number}: cites a document outside the project")
        for number, line in enumerate(text.splitlines(), 1):
            for match in POINTER.finditer(line):
                why = broken(match.group(1), match.group(2))
                if why:
                    problems.append(f"{name}:{number}: {why}")
    assert problems == [], "\n".join(problems)
