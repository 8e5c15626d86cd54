"""kubectl (with kustomize) for ``make test``'s deploy/k8s checks, before the venv exists.

Debian's kubernetes-client (1.20) is too old for kustomize components, so this fetches the
release binary, checked against its published sha256, into /usr/local/bin when run as root;
anyone else gets one line naming the command. Standard library only, like
:mod:`vkit.bootstrap`. Nothing happens when a kubectl is already on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

VERSION = "v1.32.4"
TARGET = Path("/usr/local/bin/kubectl")


def release_url(machine: str) -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[machine]
    return f"https://dl.k8s.io/release/{VERSION}/bin/linux/{arch}/kubectl"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vkit.bootstrap_kubectl")
    parser.add_argument("--dry-run", action="store_true", help="print the URL, fetch nothing")
    args = parser.parse_args(argv)
    if shutil.which("kubectl") is not None:
        return 0
    url = release_url(platform.machine())
    if args.dry_run:
        print(f"fetch {url} -> {TARGET}")
        return 0
    if os.geteuid() != 0:
        print(
            f"make test needs kubectl: run `sudo {sys.executable} -m vkit.bootstrap_kubectl`"
            " (or install kubectl >= 1.27), then make test again",
            file=sys.stderr,
        )
        return 1
    print(f"make test: fetching kubectl {VERSION}", file=sys.stderr)
    binary = urllib.request.urlopen(url, timeout=300).read()
    expected = urllib.request.urlopen(url + ".sha256", timeout=60).read().decode().split()[0]
    if hashlib.sha256(binary).hexdigest() != expected:
        print(f"make test: kubectl from {url}: checksum mismatch", file=sys.stderr)
        return 1
    TARGET.write_bytes(binary)
    TARGET.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
