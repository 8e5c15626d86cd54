"""Slow clients against the bare gateway, and against the edge NGINX in front of it.

The gateway's server (uvicorn) has no timeout for an unfinished request head and reads a
body in Python chunk by chunk. The first tests show what that costs the gateway alone (the
reason for the edge: they fail the day uvicorn bounds such clients itself); the others run
the same attacks against a real edge (``vkit/edge_conf.py``) in front of a real gateway.
Bounded: a few hundred sockets from 127.0.0.1, seconds each, every socket closed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.edge_processes import (
    GATEWAY_NOFILE,
    Gateway,
    closed_by_peer,
    edge_process,
    gateway_process,
    probe,
    slow_bodies,
    slow_heads,
    trickle,
    trickled_body,
)
from tests.vllm_standin import Script, standin_in_thread
from vkit.edge_conf import EdgeLimits

pytestmark = pytest.mark.integration

ATTACKERS = GATEWAY_NOFILE + 44  # more than the gateway's descriptors, far below NGINX's
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
CONNS_PER_CLIENT = 8
TRICKLED_BYTES = 64 * 1024


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with standin_in_thread(Script()) as upstream, gateway_process(tmp_path, upstream.url) as gw:
        yield gw


@pytest.fixture
def edge_url(tmp_path: Path, gateway: Gateway) -> Iterator[str]:
    limits = EdgeLimits(
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        conns_per_client=CONNS_PER_CLIENT,
    )
    with edge_process(tmp_path, gateway, limits) as port:
        yield f"http://127.0.0.1:{port}"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_slow_heads_take_the_bare_gateway_down(gateway: Gateway) -> None:
    assert probe(gateway.url) == 200
    with slow_heads(_port(gateway.url), ATTACKERS):
        time.sleep(1)
        during = probe(gateway.url), probe(gateway.url, secret=gateway.secret)
        still_after = probe(gateway.url)  # after HEADER_TIMEOUT_S and more: nothing cut them
    # Every descriptor is held by a client that never finished its head: a fresh client's
    # /livez and a keyed request both fail, however long the attack lasts.
    assert 200 not in during, during
    assert still_after != 200
    time.sleep(1)
    assert probe(gateway.url) == 200  # back once the attackers left


def test_a_trickled_body_costs_the_bare_gateway_cpu(gateway: Gateway, edge_url: str) -> None:
    body = trickled_body(TRICKLED_BYTES)
    before = gateway.cpu_s()
    answer = trickle(_port(gateway.url), gateway.secret, body)
    bare_s = gateway.cpu_s() - before
    before = gateway.cpu_s()
    through_edge = trickle(_port(edge_url), gateway.secret, body)
    edge_s = gateway.cpu_s() - before
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert through_edge.startswith(b"HTTP/1.1 200"), through_edge[:200]
    # Alone the gateway runs Python for each segment that arrives (0.05-0.14 s measured
    # here for 64 KiB; segments coalesce when it lags); behind the edge it reads one whole
    # body (0.00 s at the clock's 10 ms resolution).
    print(
        f"gateway CPU for {TRICKLED_BYTES} bytes sent 1 by 1: {bare_s:.3f} s bare, "
        f"{edge_s:.3f} s behind the edge"
    )
    assert bare_s >= 0.02, bare_s
    assert edge_s < bare_s, (bare_s, edge_s)


def test_the_edge_cuts_slow_heads_and_keeps_serving(gateway: Gateway, edge_url: str) -> None:
    with slow_heads(_port(edge_url), ATTACKERS) as sockets:
        time.sleep(0.5)
        assert probe(edge_url) == 200
        assert probe(edge_url, secret=gateway.secret) == 200
        assert gateway.open_fds() < 64  # none of the attackers reached the gateway
        started = time.monotonic()
        cut = [
            closed_by_peer(sock, HEADER_TIMEOUT_S + 3 - (time.monotonic() - started))
            for sock in sockets
        ]
    assert all(cut), f"{cut.count(False)} slow heads still open after the header timeout"
    assert probe(edge_url) == 200


def test_the_edge_bounds_slow_bodies_per_client(gateway: Gateway, edge_url: str) -> None:
    port = _port(edge_url)
    cpu_before = gateway.cpu_s()
    with slow_bodies(port, CONNS_PER_CLIENT * 3, gateway.secret) as sockets:
        time.sleep(0.5)
        refused = [sock.recv(4096) for sock in sockets[CONNS_PER_CLIENT:]]
        # Another client is served meanwhile; the gateway has seen none of those bodies.
        assert probe(edge_url) == 200
        assert probe(edge_url, secret=gateway.secret) == 200
        started = time.monotonic()
        cut = [
            closed_by_peer(sock, BODY_TIMEOUT_S + 3 - (time.monotonic() - started))
            for sock in sockets[:CONNS_PER_CLIENT]
        ]
    # Past CONNS_PER_CLIENT the same address is refused at once, in the OpenAI envelope...
    assert all(answer.startswith(b"HTTP/1.1 429") for answer in refused), refused[:2]
    assert all(b'"rate_limit_exceeded"' in answer for answer in refused)
    # ...and the admitted ones are cut once their body stalls for client_body_timeout.
    assert all(cut), f"{cut.count(False)} stalled bodies still open after the body timeout"
    assert gateway.cpu_s() - cpu_before < 1.0


def test_the_edge_refuses_a_body_over_the_gateway_limit(gateway: Gateway, tmp_path: Path) -> None:
    limits = EdgeLimits(max_body_bytes=1024)
    with (
        edge_process(tmp_path, gateway, limits) as port,
        slow_bodies(int(port), 1, gateway.secret, length=4096) as (sock,),
    ):
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"invalid_request_error"' in answer
