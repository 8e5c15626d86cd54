"""Spill-over on real vLLM (slow tier: ``-m engine``): a third CPU replica, with an API key of
its own and served under another name, stands in for the remote endpoint, behind a small TCP
proxy that adds latency of its own; the OpenAI SDK is the client.

With the gateway's local replica killed, an opted-in key's requests (whole and streamed) are
answered by the remote, renamed on the way out and sent with the remote's key, and billed to
the remote's name in the metrics and the usage ledger; a key that did not opt in gets a 503.
With the local replica busy instead (``tests.engine.capped_replica`` kept at its
``--max-num-queued-reqs``, refusing with vLLM's queue-full 503), the same: the opted-in key's
request goes to the remote (reason ``busy``), an on-premises key's gets the gateway's 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.upstream_call import UPSTREAMS_FULL
from launcher.supervision.readiness import ReadinessCheck
from launcher.supervision.readiness_probe import VllmProbe
from tests.engine import CAPPED_QUEUED_REQS, READY_TIMEOUT_S, EngineReplica
from tests.gateway.conftest import SECRET, GatewayFactory, ServedGateway, wait_until
from tests.gateway.doubles import Key
from tests.gateway.ledger_stores import a_ledger
from tests.gateway.test_engine import MODEL, chat
from vkit.stack.ports import free_port

pytestmark = pytest.mark.engine

REMOTE_MODEL = "remote-llama"  # the remote serves the model under another name
REMOTE_KEY = "rk-remote-only"
BOB = "sk-test-bob"
LATENCY_S = 0.2  # the proxy's, before the first byte of each answer


@pytest.fixture(scope="module")  # stopped after this module: CI's engines share two cores
def remote_replica(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineReplica]:
    """The stand-in for the remote endpoint: one more replica, started once for this module."""
    replica = EngineReplica(
        model_dir=tiny_model_dir,
        port=free_port(),
        cpu_core=(os.cpu_count() or 1) - 1,
        log_path=tmp_path_factory.mktemp("remote-logs") / "remote.log",
        model=REMOTE_MODEL,
        extra_args=("--", "--api-key", REMOTE_KEY),
    )
    replica.start()
    try:
        probe = VllmProbe(replica.base_url, ReadinessCheck.of(REMOTE_KEY, [REMOTE_MODEL]))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not probe.ready():
            if not replica.running or time.monotonic() > deadline:
                pytest.fail(f"the remote stand-in did not start:\n{replica.log_tail()}")
            time.sleep(1.0)
        yield replica
    finally:
        replica.stop()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds the first bytes answering each request (any bytes
    from the client since the last answer) ``delay`` seconds."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        asked = asyncio.Event()  # set: the client sent bytes not yet answered
        await asyncio.gather(
            self._pipe(reader, up_writer, asked, answering=False),
            self._pipe(up_reader, writer, asked, answering=True),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        asked: asyncio.Event,
        *,
        answering: bool,
    ) -> None:
        try:
            while data := await source.read(65536):
                if not answering:
                    asked.set()
                elif asked.is_set():
                    asked.clear()
                    await asyncio.sleep(self.delay)
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


@pytest.fixture
async def proxy(remote_replica: EngineReplica) -> AsyncIterator[DelayProxy]:
    async with DelayProxy(remote_replica.port, LATENCY_S) as running:
        yield running


def client(gw_url: str, secret: str) -> openai.AsyncOpenAI:
    # a long connect timeout: the gateway shares this test's event loop, which a CPU-starved
    # machine may not run for seconds (docs/vllm-server.md#priority-scheduling)
    timeout = openai.Timeout(600.0, connect=60.0)
    return openai.AsyncOpenAI(
        base_url=f"{gw_url}/v1", api_key=secret, max_retries=0, timeout=timeout
    )


async def spill_gateway(
    start_gateway: GatewayFactory,
    upstream: str,
    keys: dict[str, Key],
    proxy: DelayProxy,
    ledger: Any,
    probe_timeout: float | None = None,
) -> ServedGateway:
    """A gateway in front of ``upstream`` spilling to the remote stand-in (through ``proxy``),
    once its replica and the remote are both seen ready. ``probe_timeout`` (default: the
    settings'): the replica's and the remote's probes' (a busy CPU replica's API server may
    answer seconds late, which must not read as "down": docs/vllm-server.md#priority-scheduling)."""
    timeout = {} if probe_timeout is None else {"timeout": probe_timeout}
    spill_timeout = {} if probe_timeout is None else {"probe_timeout": probe_timeout}
    gw = await start_gateway(
        upstreams=[upstream],
        keys=keys,
        health={"interval": 0.5, "expected_models": [MODEL], **timeout},
        spill={
            "url": proxy.url,
            "name": "serverless",
            "api_key": REMOTE_KEY,
            "models": {MODEL: REMOTE_MODEL},
            "probe_interval": 0.5,
            **spill_timeout,
        },
        ledger=ledger,
    )
    pool, spill = gw.app.running.pool, gw.app.running.forwarder.spill
    assert spill is not None
    await wait_until(lambda: pool.any_ready and spill.remote.ready, timeout=20)
    return gw


async def usage_by_backend(ledger: Any, key: str) -> dict[str, list[int]]:
    """``key``'s [requests, completion tokens] per backend in the ledger, flushed first."""
    await ledger.flush()
    by_backend: dict[str, list[int]] = {}
    for row in ledger.store.usage(0, 2**40, key=key):  # one row per hour and backend
        counts = by_backend.setdefault(row.backend, [0, 0])
        counts[0] += row.requests
        counts[1] += row.completion_tokens
    return by_backend


async def test_every_local_replica_killed_the_remote_answers_billed_to_its_own_name(
    vllm_replicas: list[EngineReplica],
    proxy: DelayProxy,
    start_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    local = vllm_replicas[0]
    ledger = a_ledger(f"sqlite:///{tmp_path / 'usage.sqlite3'}", flush=0.2)
    keys = {SECRET: Key("alice", spill=True), BOB: Key("bob")}
    gw = await spill_gateway(start_gateway, local.base_url, keys, proxy, ledger)
    pool = gw.app.running.pool
    alice, bob = client(gw.url, SECRET), client(gw.url, BOB)
    messages: Any = [{"role": "user", "content": "Tell me a story."}]
    extra = {"ignore_eos": True}
    try:
        here = await alice.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, extra_body=extra
        )
        assert here.model == MODEL  # the local replica's answer

        local.kill()
        await wait_until(lambda: not pool.any_ready, timeout=20)

        whole = await alice.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, extra_body=extra
        )
        assert whole.model == REMOTE_MODEL  # the remote's answer, its name for the model
        assert whole.usage is not None and whole.usage.completion_tokens == 5
        stream = await alice.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        with pytest.raises(openai.APIStatusError) as refused:
            await bob.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
        assert refused.value.status_code == 503  # bob never opted in

        spilled = {"backend": "serverless", "key": "alice", "direction": "completion"}
        assert gw.metric("vkit_gateway_spilled_tokens_total", spilled) == 5 + 6
        reason = {"backend": "serverless", "reason": "down"}
        assert gw.metric("vkit_gateway_spilled_requests_total", reason) == 2
        assert await usage_by_backend(ledger, "alice") == {"local": [1, 4], "serverless": [2, 11]}
    finally:
        await alice.close()
        await bob.close()
        if not local.running:
            local.start()
            await asyncio.to_thread(local.wait_ready, READY_TIMEOUT_S)


async def keep_full(replica: EngineReplica, stop: asyncio.Event) -> None:
    """Keep one of the replica's queue places taken, straight on vLLM: long requests, one
    after another, retried while vLLM refuses them."""
    async with httpx.AsyncClient(base_url=replica.base_url, timeout=600) as direct:
        while not stop.is_set():
            answer = await direct.post("/v1/chat/completions", json=chat(1800))
            if answer.status_code == 503:
                await asyncio.sleep(0.05)


async def test_the_local_replica_at_its_queue_cap_the_remote_answers_an_on_premises_key_gets_503(
    capped_replica: EngineReplica,
    proxy: DelayProxy,
    start_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    ledger = a_ledger(f"sqlite:///{tmp_path / 'usage.sqlite3'}", flush=0.2)
    # bob opted in but must stay on-premises: on-premises wins
    keys = {SECRET: Key("alice", spill=True), BOB: Key("bob", spill=True, on_premises=True)}
    gw = await spill_gateway(
        start_gateway, capped_replica.base_url, keys, proxy, ledger, probe_timeout=30.0
    )
    stop = asyncio.Event()
    fillers = [
        asyncio.create_task(keep_full(capped_replica, stop)) for _ in range(CAPPED_QUEUED_REQS)
    ]
    alice, bob = client(gw.url, SECRET), client(gw.url, BOB)
    messages: Any = [{"role": "user", "content": "Tell me a story."}]
    extra = {"ignore_eos": True}
    local_answers = 0  # alice's requests that found a place free between two fillers
    try:
        # Full when vLLM says so (the fillers' own retries are refused); a request that still
        # found a place (a filler between two requests) is served locally: asked again.
        for _ in range(20):
            spilled = await alice.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=5, extra_body=extra
            )
            if spilled.model == REMOTE_MODEL:
                break
            local_answers += 1
            await asyncio.sleep(0.5)
        assert spilled.model == REMOTE_MODEL, "the replica never refused alice's request"
        assert spilled.usage is not None and spilled.usage.completion_tokens == 5
        refusal: openai.APIStatusError | None = None
        for _ in range(20):
            try:
                await bob.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
            except openai.APIStatusError as refused:
                refusal = refused
                break
            await asyncio.sleep(0.5)  # served locally: the replica had a place free
        assert refusal is not None, "the replica never refused bob's request"
        assert refusal.status_code == 503
        assert int(refusal.response.headers["retry-after"]) >= 1
        assert refusal.response.json()["error"]["code"] == UPSTREAMS_FULL

        busy = {"backend": "serverless", "reason": "busy"}
        assert gw.metric("vkit_gateway_spilled_requests_total", busy) == 1
        tokens = {"backend": "serverless", "key": "alice", "direction": "completion"}
        assert gw.metric("vkit_gateway_spilled_tokens_total", tokens) == 5
        by_backend = await usage_by_backend(ledger, "alice")
        assert by_backend.pop("serverless") == [1, 5]
        assert by_backend == (
            {"local": [local_answers, 5 * local_answers]} if local_answers else {}
        )
    finally:
        stop.set()
        await alice.close()
        await bob.close()
        for filler in fillers:
            filler.cancel()
        await asyncio.gather(*fillers, return_exceptions=True)
