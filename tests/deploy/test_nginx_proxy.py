"""A real NGINX from the rendered template in front of two stand-in replicas.

Shows what the deploy relies on: round-robin, SSE chunks passed on unbuffered, and
failover to the live replica (a dead port, and a POST answered 503 before any output).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.nginx_process import running_nginx
from tests.deploy.standin import StandInReplica
from vkit.nginx_conf import ProxyTuning

pytestmark = pytest.mark.services

COMPLETION = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 4}


@pytest.fixture
def replicas() -> Iterator[list[StandInReplica]]:
    pair = [StandInReplica("a"), StandInReplica("b")]
    try:
        for replica in pair:
            replica.start()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture
def proxy(tmp_path: Path, replicas: list[StandInReplica]) -> Iterator[str]:
    # A long fail_timeout so a replica marked failed stays out for the whole test.
    tuning = ProxyTuning(fail_timeout_s=30)
    with running_nginx(tmp_path / "nginx", [r.address for r in replicas], tuning) as url:
        yield url


def post_names(base_url: str, count: int) -> list[str]:
    names = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(count):
            response = client.post("/v1/completions", json=COMPLETION)
            assert response.status_code == 200, response.text
            names.append(response.json()["replica"])
    return names


def test_requests_alternate_between_replicas(proxy: str) -> None:
    names = post_names(proxy, 6)
    assert names.count("a") == 3
    assert names.count("b") == 3
    assert all(x != y for x, y in itertools.pairwise(names))


def test_stream_chunks_arrive_before_the_replica_sends_the_rest(
    proxy: str, replicas: list[StandInReplica]
) -> None:
    seen: list[str] = []
    with (
        httpx.Client(base_url=proxy, timeout=10) as client,
        client.stream("POST", "/stream", json=COMPLETION) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            seen.append(line)
            # Each replica holds its second chunk until the first one has been seen here.
            for replica in replicas:
                replica.release_stream.set()
    assert seen == ["data: first", "data: second", "data: [DONE]"]


def test_a_dead_replica_is_skipped(proxy: str, replicas: list[StandInReplica]) -> None:
    replicas[1].stop()
    assert post_names(proxy, 6) == ["a"] * 6


def test_a_post_answered_503_is_retried_on_the_other_replica(
    proxy: str, replicas: list[StandInReplica]
) -> None:
    """``non_idempotent`` at work: without it NGINX returns the 503 of a POST as it is."""
    replicas[0].status = 503
    assert post_names(proxy, 6) == ["b"] * 6
    # The failing replica saw one request, then sat out its fail_timeout.
    assert replicas[0].hits == 1


def test_no_live_replica_gives_the_openai_error_envelope(
    proxy: str, replicas: list[StandInReplica]
) -> None:
    for replica in replicas:
        replica.stop()
    response = httpx.post(f"{proxy}/v1/completions", json=COMPLETION, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == 502


def test_a_body_over_the_limit_is_refused_by_nginx(
    proxy: str, replicas: list[StandInReplica]
) -> None:
    response = httpx.post(f"{proxy}/v1/completions", content=b"x" * (5 << 20), timeout=10)
    assert response.status_code == 413
    assert replicas[0].hits + replicas[1].hits == 0
