"""A ``sitecustomize`` for the CPU engine's Python processes: ask Linux for AMX tile state.

On CPUs with AMX (``amx_tile`` in ``/proc/cpuinfo``) vLLM 0.32's CPU worker dies when the
engine's first request has a tiny prompt ("Worker proc VllmWorker-0 died unexpectedly", then
``EngineDeadError`` 500s); processes that first asked for the tile state
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``) served every short prompt
(docs/cpu-engine.md#amx-cpus). Linux keeps that permission per process, across ``fork`` but not
``execve``, and vLLM starts its workers through multiprocessing (spawn: a fresh
interpreter). So ``vkit launch --cpu`` puts this directory first on the engine's
``PYTHONPATH`` (:func:`launcher.supervision.launch_spec.engine_env`), and every Python
process of the engine runs :mod:`sitecustomize` here at start-up: the request, then the
``sitecustomize`` it shadows, if there is one. Elsewhere (no AMX, not x86-64 Linux) the
request fails quietly and changes nothing.

This package only holds the directory; nothing imports it as ``launcher.supervision.amx_site``
but the tests.
"""

from __future__ import annotations

from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent
