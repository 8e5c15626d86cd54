"""The ledger of a real ``vkit gateway`` process under load (tier ``integration``): what a
SIGKILL loses is bounded by the flush interval, and a clean stop writes every token.

Clients count the tokens of every answer they get (the ``usage`` vLLM reports, which the
gateway bills); the ledger's SQLite file is read after the gateway is gone.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.keyfile import add_key
from tests.gateway.gateway_process import serving_gateway
from tests.vllm_standin import Script, ScriptedUpstream, standin_in_thread

pytestmark = pytest.mark.integration

FLUSH_S = 0.5
CLIENTS = 4
BODY = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass
class Answers:
    """What the clients got: (time answered, tokens) of every 200."""

    done: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tokens(self, until: float = float("inf"), since: float = 0.0) -> int:
        return sum(t for at, t in self.done if since <= at < until)


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with standin_in_thread(Script(chunk_delay=0.0)) as running:
        yield running


def start_gateway(tmp_path: Path, upstream_url: str) -> tuple[subprocess.Popen[bytes], str, str]:
    keys = tmp_path / "keys.yaml"
    secret = add_key(keys, "alice")
    proc, url = serving_gateway(
        {
            "VKIT_GATEWAY_UPSTREAMS": upstream_url,
            "VKIT_GATEWAY_KEYS_FILE": str(keys),
            "VKIT_GATEWAY_HEALTH__INTERVAL": "0.2",
            "VKIT_GATEWAY_LEDGER__ENABLED": "true",
            "VKIT_GATEWAY_LEDGER__FLUSH_INTERVAL": str(FLUSH_S),
        },
        timeout_s=30,
    )
    return proc, url, secret


def load(url: str, secret: str, answers: Answers, stop: threading.Event) -> list[threading.Thread]:
    def client() -> None:
        with httpx.Client(base_url=url, timeout=5) as http:
            while not stop.is_set():
                try:
                    got = http.post(
                        "/v1/chat/completions",
                        json=BODY,
                        headers={"Authorization": f"Bearer {secret}"},
                    )
                except httpx.HTTPError:
                    return  # the gateway is gone
                if got.status_code == 200:
                    usage = got.json()["usage"]
                    with answers.lock:
                        answers.done.append((time.monotonic(), usage["total_tokens"]))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_answers(answers: Answers, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(answers.done) < count:
        assert time.monotonic() < deadline, f"only {len(answers.done)} answers"
        time.sleep(0.05)


def written(tmp_path: Path) -> tuple[int, int]:
    """(requests, tokens) in the ledger file beside the keys."""
    with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
        requests, tokens = db.execute(
            "SELECT SUM(requests), SUM(prompt_tokens + completion_tokens) FROM usage_hours"
        ).fetchone()
    return int(requests or 0), int(tokens or 0)


@contextlib.contextmanager
def gateway_under_load(
    tmp_path: Path, upstream: ScriptedUpstream
) -> Iterator[tuple[subprocess.Popen[bytes], Answers, Callable[[], None]]]:
    """A gateway process answering :data:`CLIENTS` clients (20 answers in), and what stops
    the clients (called on the way out too); the gateway is killed if still running then."""
    proc, url, secret = start_gateway(tmp_path, upstream.url)
    answers, stop = Answers(), threading.Event()
    threads = load(url, secret, answers, stop)

    def stop_clients() -> None:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)

    try:
        wait_for_answers(answers, 20)
        yield proc, answers, stop_clients
    finally:
        stop_clients()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_sigkill_loses_at_most_one_flush_interval_of_usage(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    with gateway_under_load(tmp_path, upstream) as (proc, answers, _):
        time.sleep(3 * FLUSH_S)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    _, tokens = written(tmp_path)
    got = answers.tokens()
    per_request = max(t for _, t in answers.done)
    # What was written, the clients got (less, at most, the answers in flight at the kill) ...
    assert tokens <= got + CLIENTS * per_request
    # ... and what the clients got and the ledger lacks was answered within one flush
    # interval (and the write's own time: 0.2 s here) before the kill.
    lost = got - tokens
    assert lost <= answers.tokens(since=killed_at - FLUSH_S - 0.2), (lost, got)
    assert tokens >= answers.tokens(until=killed_at - FLUSH_S - 0.2) > 0


def test_a_clean_stop_writes_what_the_clients_got(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    with gateway_under_load(tmp_path, upstream) as (proc, answers, stop_clients):
        time.sleep(1.0)
        stop_clients()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # served out, the signal raised
    assert written(tmp_path) == (len(answers.done), answers.tokens())
