"""The real stack for the end-to-end tests, started once per session.

``vllm_replicas`` (two CPU replicas on the tiny model) comes from the ``tests.engine``
plugin. On top of them, built here with :mod:`vkit.stack` (the same code ``vkit up``
runs): one NGINX from the rendered template, one ``redis-server``, one keys file, and
three ``vkit gateway`` processes, all on free ports:

- ``gateway`` and ``gateway_peer``: NGINX upstream, limits shared through Redis, caps clamp;
- ``gateway_strict``: caps reject, a short first-byte timeout, limits in memory.

Every test module here sets ``pytestmark = pytest.mark.engine``. The tests stand on their
own, so any order or subset passes (``-p random_order --random-order``): each test makes
its own key with :func:`new_key`, so a limit starts from a full budget whatever ran before;
``test_up.py`` runs its own ``vkit up`` beside the session stack; ``test_failover.py``
leaves the replicas restarted and back in every gateway's and NGINX's rotation.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from gateway.keyfile import save_keys
from tests.e2e.clients import wait_for
from vkit.stack.demo_key import add_demo_key
from vkit.stack.ports import pick_free_ports
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, gateway_spec, nginx_spec, redis_spec
from vkit.stack.up_settings import DemoKeyLimits, UpSettings

MODEL = "tiny-llama"
STARTUP_S = 60.0
# The gateways look at the keys file about once a second; a new key is usable within that.
KEY_ACCEPTED_S = 10.0
PROBE_MODEL = "not-allowed-for-this-key"  # new_key's keys may use MODEL only


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A key made for one test: ``name`` labels its metrics, ``secret`` authenticates."""

    name: str
    secret: str
    limits: DemoKeyLimits


class KeyFactory(Protocol):
    def __call__(
        self,
        *gateways: str,
        rpm: int = ...,
        tpm: int = ...,
        concurrency: int = ...,
        max_tokens: int = ...,
    ) -> NewKey: ...


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
def keys_file(stack_dir: Path) -> Path:
    """The keys file every session gateway reads: empty at start, filled by :func:`new_key`."""
    path = StackLayout(stack_dir).keys_file
    save_keys(path, [])
    return path


def key_name(node_name: str) -> str:
    """A key name unique in the session that says which test made it."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", node_name)[:50]
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def accepts(gateway: str, secret: str) -> bool:
    """Whether ``gateway`` knows the key yet: anything but 401 to a call it may not make.

    The call asks for a model the key is not allowed, so a gateway that knows the key
    answers 403 after authenticating it and before charging any limit or reaching a
    replica; ``GET /v1/models`` would not do, as it may count against the key's rpm.
    """
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": PROBE_MODEL, "prompt": "Hi", "max_tokens": 1}
    try:
        response = httpx.post(f"{gateway}/v1/completions", json=body, headers=headers, timeout=5)
    except httpx.TransportError:
        return False
    return response.status_code != 401


@pytest.fixture
def new_key(keys_file: Path, request: pytest.FixtureRequest) -> KeyFactory:
    """``new_key(*gateways, rpm=..., tpm=..., concurrency=..., max_tokens=...)``: a fresh key.

    A key per test, not per session: a limits test then starts from a full budget and its
    metrics count only its own traffic, whatever ran before. The key is added to the keys
    file the session's gateways read, and the call returns once every gateway in
    ``gateways`` accepts it (they reload the file when it changes, about once a second).
    """

    def make(
        *gateways: str,
        rpm: int = 10_000,
        tpm: int = 10_000_000,
        concurrency: int = 16,
        max_tokens: int = 64,
    ) -> NewKey:
        limits = DemoKeyLimits(rpm=rpm, tpm=tpm, concurrency=concurrency, max_tokens=max_tokens)
        name = key_name(request.node.name)
        secret = add_demo_key(keys_file, name, limits, [MODEL])
        wait_for(
            lambda: all(accepts(gateway, secret) for gateway in gateways),
            KEY_ACCEPTED_S,
            f"{' and '.join(gateways)} to accept the new key {name}",
        )
        return NewKey(name, secret, limits)

    return make


@pytest.fixture(scope="session")
def started_gateways() -> list[str]:
    """Base URLs of the session gateways started so far (they start when first asked for),
    so a test that takes the replicas down can wait for all of them to be ready again."""
    return []


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
    started: list[str],
    name: str,
    *,
    redis: bool,
    env: dict[str, str],
) -> str:
    port, admin_port = pick_free_ports(2)
    redis_port = ports.redis if redis else None
    gw_ports = dataclasses.replace(ports, gateway=port, redis=redis_port, gateway_admin=admin_port)
    spec = gateway_spec(UpSettings(), StackLayout(stack_dir), gw_ports, sys.executable)
    spec = dataclasses.replace(
        spec,
        name=name,
        log_path=stack_dir / "logs" / f"{name}.log",
        env={**spec.env, "VKIT_GATEWAY_HEALTH__INTERVAL": "0.5", **env},
    )
    _start(group, spec)
    started.append(f"http://127.0.0.1:{port}")
    ADMIN_URLS[started[-1]] = f"http://127.0.0.1:{admin_port}"
    return started[-1]


# Each session gateway's admin listener (/metrics), by the gateway's public base URL.
ADMIN_URLS: dict[str, str] = {}


def metrics_text(gateway: str) -> str:
    """The gateway's /metrics, from its admin listener (the public port serves none)."""
    return httpx.get(f"{ADMIN_URLS[gateway]}/metrics", timeout=5).text


@pytest.fixture(scope="session")
def gateway(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    nginx_url: str,
    redis_url: str,
    keys_file: Path,
    started_gateways: list[str],
) -> str:
    """Base URL of the main gateway (clamps over-cap max_tokens, limits in Redis)."""
    env = {"VKIT_GATEWAY_CAPS__OVER_CAP": "clamp"}
    return _start_gateway(
        processes, stack_dir, ports, started_gateways, "gateway", redis=True, env=env
    )


@pytest.fixture(scope="session")
def gateway_peer(
    gateway: str,
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    started_gateways: list[str],
) -> str:
    """A second gateway process sharing the main one's Redis and keys."""
    env = {"VKIT_GATEWAY_CAPS__OVER_CAP": "clamp"}
    return _start_gateway(
        processes, stack_dir, ports, started_gateways, "gateway-peer", redis=True, env=env
    )


STRICT_FIRST_BYTE_S = 0.5


@pytest.fixture(scope="session")
def gateway_strict(
    stack_dir: Path,
    ports: StackPorts,
    processes: ProcessGroup,
    nginx_url: str,
    keys_file: Path,
    started_gateways: list[str],
) -> str:
    """Rejects over-cap max_tokens; gives up on a response after 0.5 s without a byte."""
    env = {
        "VKIT_GATEWAY_CAPS__OVER_CAP": "reject",
        "VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE": str(STRICT_FIRST_BYTE_S),
        "VKIT_GATEWAY_RETRY__ATTEMPTS": "1",
    }
    return _start_gateway(
        processes, stack_dir, ports, started_gateways, "gateway-strict", redis=False, env=env
    )
