"""A scheduled scale-down and up on two real vLLM CPU replicas (slow tier: ``-m engine``):
two replicas, one, none, two again under a steady trickle of requests through the real
gateway, and no request fails -- the gateway holds while no replica is ready.

The replicas are the session's (:func:`tests.engine.vllm_replicas`). As under
``vkit up --schedule``, a replica leaves the gateway's discovery file and is stopped (SIGTERM:
vLLM drains) once the gateway has read the file; one started again goes back in it. Stopped
while the gateway still sends it requests, vLLM fails those that arrive during its shutdown
(500, "cannot schedule new futures after shutdown"), which is why the file goes first. The
follower's clock is the test's, one step per "hour", each taken once the previous one has
shown its effect. The session's replicas are both running and ready again when it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.gateway.test_scheduled_scaling import serve_only
from vkit.stack.schedule_follower import ScheduleFollower, write_replicas_file

pytestmark = pytest.mark.engine

PHASE = ["start"]
failures: list[str] = []
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
START_S = 300.0  # a CPU replica's start-up bound (tests.engine.READY_TIMEOUT_S)


class EngineReplicas:
    """The session's replicas, the last ones stopped first (out of the gateway's discovery
    file before), started again on their ports (back in the file)."""

    def __init__(self, replicas: list[Any], gw: ServedGateway, file: Path) -> None:
        self.replicas, self.gw, self.file = replicas, gw, file
        self.running = len(replicas)

    async def scale_to(self, target: int) -> None:
        await serve_only(self.gw, self.file, [r.base_url for r in self.replicas[:target]])
        for replica in self.replicas[target : self.running][::-1]:
            await asyncio.to_thread(replica.stop)
        starting = self.replicas[self.running : target]
        for replica in starting:
            replica.start()
        for replica in starting:
            await asyncio.to_thread(replica.wait_ready, START_S)
        self.running = target


async def trickle(gw: ServedGateway, statuses: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            answer = await gw.client.post(
                "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=START_S + 60
            )
            statuses.append(answer.status_code)
            if answer.status_code != 200:
                failures.append(f"{PHASE[0]}: {answer.status_code} {answer.text[:300]}")
        except httpx.HTTPError as exc:
            statuses.append(0)
            failures.append(f"{PHASE[0]}: {exc!r}")
        await asyncio.sleep(0.05)


async def test_a_scheduled_scale_down_and_up_on_real_vllm_fails_no_request(
    vllm_replicas: list[Any], start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    file = tmp_path / "replicas.txt"
    write_replicas_file(file, [r.base_url for r in vllm_replicas])
    gw = await start_gateway(
        upstreams=[r.base_url for r in vllm_replicas],
        health={"interval": 0.5, "timeout": 2.0, "expected_models": ["tiny-llama"]},
        hold={"max_wait": START_S, "probe_interval": 0.2},
        discovery={"file": str(file), "interval": 0.2},
    )
    await wait_until(lambda: gw.app.running.pool.any_ready, timeout=10)
    replicas = EngineReplicas(vllm_replicas, gw, file)
    hour = [0]
    follower = ScheduleFollower(floors=(2, 1, 0, 2), hour_now=lambda: hour[0])
    assert follower.due() == 2  # hour 0: both, as the session started them
    statuses: list[int] = []
    stop = asyncio.Event()
    sender = asyncio.create_task(trickle(gw, statuses, stop))

    async def take_hour(at: int) -> None:
        hour[0] = at
        PHASE[0] = f"hour {at}"
        target = follower.due()
        assert target is not None
        await replicas.scale_to(target)

    try:
        await wait_until(lambda: len(statuses) >= 5, timeout=60)
        await take_hour(1)  # one replica
        served = len(statuses)
        await wait_until(lambda: len(statuses) >= served + 5, timeout=60)
        await take_hour(2)  # none: the gateway holds
        await wait_until(lambda: gw.metric("vkit_gateway_held_requests") >= 1, timeout=60)
        await take_hour(3)  # both again
        served = len(statuses)
        await wait_until(lambda: len(statuses) >= served + 5, timeout=START_S)
    finally:
        stop.set()
        await sender
        for replica in vllm_replicas:  # the session's replicas stay up for other tests
            if not replica.running:
                replica.start()
                await asyncio.to_thread(replica.wait_ready, START_S)
    assert set(statuses) == {200}, failures
    assert gw.metric("vkit_gateway_hold_seconds_count") >= 1
