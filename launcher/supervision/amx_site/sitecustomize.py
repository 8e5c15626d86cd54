"""Run at the start of every Python process of vkit's CPU engine (see ``__init__.py``).

Standard library only, and quick: it runs before vLLM imports anything.
"""

from __future__ import annotations

import os
import sys

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def request_amx_permission() -> bool:
    """Ask Linux for AMX tile data state for this process; ``True`` when granted."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) == 0
    except (OSError, AttributeError):
        return False


def run_shadowed_sitecustomize() -> None:
    """Python imports only the first ``sitecustomize`` on ``sys.path``: run the next one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    request_amx_permission()
    run_shadowed_sitecustomize()
