"""The real stack for the end-to-end tests, started once per session.

``vllm_replicas`` (two CPU replicas on the tiny model) comes from the ``tests.engine``
plugin. On top of them, built here with :mod:`vkit.stack` (the same code ``vkit up``
runs): one NGINX from the rendered template, one ``redis-server``, a keys file made with
``vkit keys add``, and three ``vkit gateway`` processes, all on free ports:

- ``gateway`` and ``gateway_peer``: NGINX upstream, limits shared through Redis, caps clamp;
- ``gateway_strict``: caps reject, a short first-byte timeout, limits in memory.

Every test module here sets ``pytestmark = pytest.mark.engine``. Tests that kill replicas live in
``test_failover.py``, which is ordered last among the E2E tests; ``test_up.py`` (its own
``vkit up``) is ordered first, before the session replicas start.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vkit.stack.demo_key import add_demo_key
from vkit.stack.ports import pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec, nginx_spec, redis_spec
from vkit.stack.up_settings import DemoKeyLimits, UpSettings

MODEL = "tiny-llama"
STARTUP_S = 60.0
FIRST = ("test_up.py",)
LAST = ("test_failover.py",)

# name -> (rpm, tpm, concurrency, max_tokens): one key per behaviour, so tests don't mix.
KEYS: dict[str, tuple[int, int, int, int]] = {
    "basic": (10_000, 10_000_000, 16, 64),
    "capped": (10_000, 10_000_000, 4, 8),
    "rpm": (3, 10_000_000, 4, 64),
    "tpm": (10_000, 240, 16, 64),
    "shared": (6, 10_000_000, 4, 64),
    "disconnect": (10_000, 10_000_000, 4, 2048),
    "slow": (10_000, 10_000_000, 4, 2048),
    "metrics": (2, 10_000_000, 4, 64),
    "failover": (10_000, 10_000_000, 8, 64),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within the E2E slots: ``vkit up`` first, replica-killing tests last."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]
    e2e = [items[i] for i in slots]

    def rank(item: pytest.Item) -> int:
        return 0 if item.path.name in FIRST else 2 if item.path.name in LAST else 1

    for slot, item in zip(slots, sorted(e2e, key=rank), strict=True):
        items[slot] = item


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-stack")


@pytest.fixture(scope="session")
def processes() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all(grace_s=10)


@pytest.fixture(scope="session")
def secrets(stack_dir: Path) -> dict[str, str]:
    """Every key of ``KEYS`` in one keys file, made by ``vkit keys add``."""
    keys_file = StackLayout(stack_dir).keys_file
    made = {}
    for name, (rpm, tpm, concurrency, max_tokens) in KEYS.items():
        limits = DemoKeyLimits(rpm=rpm, tpm=tpm, concurrency=concurrency, max_tokens=max_tokens)
        made[name] = add_demo_key(keys_file, name, limits, [MODEL])
    return made


@pytest.fixture(scope="session")
def ports(vllm_replicas: list[Any]) -> StackPorts:
    gateway, nginx, redis = pick_free_ports(3)
    replicas = tuple(int(r.port) for r in vllm_replicas)
    return StackPorts(gateway=gateway, nginx=nginx, replicas=replicas, redis=redis)


@pytest.fixture(scope="session")
def nginx_url(stack_dir: Path, ports: StackPorts, processes: ProcessGroup) -> str:
    from vkit.nginx_conf import render_nginx_conf

    layout = StackLayout(stack_dir)
    layout.nginx_prefix.mkdir(parents=True, exist_ok=True)
    upstreams = [f"127.0.0.1:{port}" for port in ports.replicas]
    layout.nginx_conf.write_text(render_nginx_conf(upstreams, f"127.0.0.1:{ports.nginx}"))
    _start(processes, nginx_spec(UpSettings(), layout, ports.nginx))
    return f"http://127.0.0.1:{ports.nginx}"


@pytest.fixture(scope="session")
def redis_url(stack_dir: Path, ports: StackPorts, processes: ProcessGroup) -> str:
    assert ports.redis is not None
    _start(processes, redis_spec(UpSettings(), StackLayout(stack_dir), ports.redis))
    return f"redis://127.0.0.1:{ports.redis}/0"


def _start(group: ProcessGroup, spec: Any) -> None:
    group.wait_ready([group.start(spec)], STARTUP_S)


def _start_gateway(
    group: ProcessGroup,
    stack_dir: Path,
    ports: StackPorts,
    name: str,
    *,
    redis: bool,
    env: dict[str, str],
) -> str:
    port = pick_free_ports(1)[0]
    gw_ports = dataclasses.replace(ports, gateway=port, redis=ports.redis if redis else None)
    spec = gateway_spec(UpSettings(), StackLayout(stack_dir), gw_ports, sys.executable)
    spec = dataclasses.replace(
        spec,
        name=name,
        log_path=stack_dir / "logs" / f"{name}.log",
        env={**spec.env, "VKIT_GATEWAY_HEALTH__INTERVAL": "0.5", **env},
    )
    _start(group, spec)
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def gateway(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    nginx_url: str,
    redis_url: str,
    secrets: dict[str, str],
) -> str:
    """Base URL of the main gateway (clamps over-cap max_tokens, limits in Redis)."""
    env = {"VKIT_GATEWAY_CAPS__OVER_CAP": "clamp"}
    return _start_gateway(processes, stack_dir, ports, "gateway", redis=True, env=env)


@pytest.fixture(scope="session")
def gateway_peer(gateway: str, stack_dir: Path, ports: StackPorts, processes: ProcessGroup) -> str:
    """A second gateway process sharing the main one's Redis and keys."""
    env = {"VKIT_GATEWAY_CAPS__OVER_CAP": "clamp"}
    return _start_gateway(processes, stack_dir, ports, "gateway-peer", redis=True, env=env)


STRICT_FIRST_BYTE_S = 0.5


@pytest.fixture(scope="session")
def gateway_strict(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    nginx_url: str,
    secrets: dict[str, str],
) -> str:
    """Rejects over-cap max_tokens; gives up on a response after 0.5 s without a byte."""
    env = {
        "VKIT_GATEWAY_CAPS__OVER_CAP": "reject",
        "VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE": str(STRICT_FIRST_BYTE_S),
        "VKIT_GATEWAY_RETRY__ATTEMPTS": "1",
    }
    return _start_gateway(processes, stack_dir, ports, "gateway-strict", redis=False, env=env)
