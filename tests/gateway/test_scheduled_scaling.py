"""A replica schedule followed under a steady trickle of requests through the real gateway:
two replicas, then one, then none (the gateway holds), then two again -- and no request fails.

The replicas are stand-in upstreams on loopback (no vLLM is started). Scaling one down is
what ``vkit up --schedule`` does: the replica leaves the gateway's discovery file, the
gateway reads the file and sends it nothing more, and then it stops (its port closes); one
started again goes back in the file. The follower's clock is the test's: each step is one
"hour" of the schedule, taken when the previous one has shown its effect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.vllm_standin import ScriptedUpstream
from vkit.stack.schedule_follower import ScheduleFollower, write_replicas_file

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def serve_only(gw: ServedGateway, file: Path, urls: list[str]) -> None:
    """Write the gateway's discovery file with ``urls`` and return once the gateway has
    read it and answered every request it had on a replica that left it."""
    write_replicas_file(file, urls)
    pool = gw.app.running.pool
    leaving = [u for u in pool.upstreams if u.url not in urls]
    await wait_until(lambda: not set(leaving) & set(pool.upstreams))  # the file was read
    await wait_until(lambda: all(u.in_flight == 0 for u in leaving))  # and answered


class StandinReplicas:
    """Stand-in replicas started and stopped as a schedule asks, the last ones first, each
    out of the gateway's discovery file before it stops."""

    def __init__(self, replicas: list[ScriptedUpstream], gw: ServedGateway, file: Path) -> None:
        self.replicas, self.gw, self.file = replicas, gw, file
        self.running = len(replicas)

    async def scale_to(self, target: int) -> None:
        await serve_only(self.gw, self.file, [r.url for r in self.replicas[:target]])
        for replica in self.replicas[target : self.running][::-1]:
            await replica.stop()
        for replica in self.replicas[self.running : target]:
            await replica.start()  # the same port again
        self.running = target


async def trickle(gw: ServedGateway, statuses: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            statuses.append(answer.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        await asyncio.sleep(0.01)


async def test_a_scheduled_scale_down_and_up_fails_no_request(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    async with ScriptedUpstream() as second:
        file = tmp_path / "replicas.txt"
        write_replicas_file(file, [upstream.url, second.url])
        gw = await start_gateway(
            upstreams=[upstream.url, second.url],
            health={"interval": 0.05, "timeout": 1.0},
            hold={"max_wait": 30, "probe_interval": 0.05},
            discovery={"file": str(file), "interval": 0.05},
        )
        replicas = StandinReplicas([upstream, second], gw, file)
        hour = [0]
        follower = ScheduleFollower(floors=(2, 1, 0, 2), hour_now=lambda: hour[0])
        statuses: list[int] = []
        stop = asyncio.Event()
        sender = asyncio.create_task(trickle(gw, statuses, stop))

        async def take_hour(at: int, then: Any) -> None:
            hour[0] = at
            target = follower.due()
            assert target is not None
            await replicas.scale_to(target)
            await wait_until(then, timeout=30)

        try:
            await wait_until(lambda: upstream.finished > 3 and second.finished > 3, timeout=30)
            served = len(statuses)
            await take_hour(1, lambda: len(statuses) > served + 20)  # one replica
            alone = second.finished
            await take_hour(2, lambda: gw.metric("vkit_gateway_held_requests") >= 1)  # none
            assert second.finished == alone
            before = (upstream.finished, second.finished)
            await take_hour(3, lambda: second.finished > before[1] + 3)  # two again
            await wait_until(lambda: upstream.finished > before[0] + 3, timeout=30)
        finally:
            stop.set()
            await sender
    assert follower.due() is None  # hour 3 applied, nothing new
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert gw.metric("vkit_gateway_hold_seconds_count") >= 1
