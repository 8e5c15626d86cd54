"""pytest plugin: the three test tiers, and the guards that keep the unit tier honest.

Registered in ``tests/conftest.py``. Every test is in exactly one tier:

- ``unit`` (no mark needed): everything in the pytest process: pure functions, in-process
  apps, the vLLM stand-in and the gateway on loopback sockets (``tests/vllm_standin/``);
  no child process. It needs nothing but the pip install (``pip install -e '.[dev]'``: no
  vLLM, no apt packages, no kubectl): ``make test-unit``.
- ``integration``: real processes: NGINX, ``redis-server``, Prometheus (``promtool``,
  ``amtool``), ``systemd-analyze``, ``kubectl``, ``docker-compose``, and the kit's own
  programs run as a user runs them (``vkit ...`` exit codes, a supervisor over a stand-in
  engine process): ``make test-integration``.
- ``system``: real vLLM engines (those also carry ``engine``), what reads the installed vLLM,
  the deploy paths (the installer as root, a service user, a real mount namespace) and the
  wheel in a fresh venv.

A test lands in a tier by its mark (``pytestmark = pytest.mark.integration`` or a decorator),
or by the fixtures it uses (:data:`SYSTEM_FIXTURES`); ``engine`` implies ``system``, and the
highest tier wins. Every other test gets the ``unit`` mark, so ``-m unit`` selects the unit
tier exactly.

Two guards fail loudly instead of letting a test drift into the wrong tier:

- a unit test that starts a process fails at that call, naming the tier it belongs in (an
  audit hook on ``subprocess.Popen``; :data:`PROGRAM_TIERS` names the programs of ``system``);
- collecting the tests must not import vLLM, torch or transformers (:data:`HEAVY_MODULES`):
  test modules import them inside the system tests that use them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

TIERS = ("unit", "integration", "system")
SYSTEM_FIXTURES = frozenset({"vllm_replicas", "tiny_model_dir"})
# The tier of a test that starts one of these programs; any other process: integration.
PROGRAM_TIERS = dict.fromkeys(("install.sh", "setpriv", "unshare", "systemctl", "vllm"), "system")
HEAVY_MODULES = ("vllm", "torch", "transformers")


def tier_of(item: pytest.Item) -> str:
    """The tier ``item`` belongs in, from its marks and the fixtures it uses."""
    names = {mark.name for mark in item.iter_markers()}
    fixtures = set(getattr(item, "fixturenames", ()))
    if names & {"system", "engine"} or fixtures & SYSTEM_FIXTURES:
        return "system"
    if "integration" in names:
        return "integration"
    return "unit"


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_processes_in_unit_tests)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(tier_of(item))
        uses_engine = set(getattr(item, "fixturenames", ())) & SYSTEM_FIXTURES
        if uses_engine and item.get_closest_marker("engine") is None:
            item.add_marker("engine")


def pytest_collection_finish(session: pytest.Session) -> None:
    loaded = [name for name in HEAVY_MODULES if name in sys.modules]
    if loaded:
        raise pytest.UsageError(
            f"collecting the tests imported {', '.join(loaded)}: import them inside the "
            "system tests that use them, so that the unit tier runs without them"
        )


# -- the guard: a unit test starts no process ----------------------------------------------

_running: dict[str, str | None] = {"tier": None, "test": None}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _running["tier"], _running["test"] = tier_of(item), item.nodeid
    try:
        return (yield)
    finally:
        _running["tier"] = _running["test"] = None


def program_started_by(argv: Any) -> str:
    """The name of the program ``argv`` starts (``vllm`` for vLLM's server run by Python)."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        argv = [argv]
    words = [os.fsdecode(word) for word in argv] or [""]
    if any(word.startswith("vllm.entrypoints") for word in words):
        return "vllm"
    return os.path.basename(words[0])


def _refuse_processes_in_unit_tests(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or _running["tier"] != "unit":
        return
    program = program_started_by(args[1] or [args[0] or ""])
    tier = PROGRAM_TIERS.get(program, "integration")
    raise RuntimeError(
        f"{_running['test']} is a unit test but starts a process ({program}): "
        f"mark it `pytest.mark.{tier}` (see tests/tiers.py)"
    )
