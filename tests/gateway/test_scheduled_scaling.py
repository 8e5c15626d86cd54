"""A replica schedule followed under a steady trickle of requests through the real gateway:
two replicas, then one, then none (the gateway holds), then two again -- and no request fails.

The replicas are stand-in upstreams on loopback (no vLLM is started); scaling one down is what
a stopped compose service does: it stops answering ready (vLLM drains on SIGTERM), the
gateway's prober sees it, and then its port closes. The follower's clock is the test's: each
step is one "hour" of the schedule, taken when the previous one has shown its effect."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.gateway.conftest import AUTH, GatewayFactory, ServedGateway, wait_until
from tests.vllm_standin import ScriptedUpstream
from vkit.stack.schedule_follower import ScheduleFollower

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class StandinReplicas:
    """Stand-in replicas started and stopped as a schedule asks, the last ones first."""

    def __init__(self, replicas: list[ScriptedUpstream]) -> None:
        self.replicas = replicas
        self.running = len(replicas)

    async def scale_to(self, target: int) -> None:
        for replica in self.replicas[target : self.running][::-1]:
            await self._stop(replica)
        for replica in self.replicas[self.running : target]:
            replica.script.health_status = 200
            await replica.start()  # the same port again
        self.running = target

    @staticmethod
    async def _stop(replica: ScriptedUpstream) -> None:
        replica.script.health_status = 503  # draining: not ready
        seen = replica.health_answers
        await wait_until(lambda: replica.health_answers >= seen + 2)  # the gateway saw it
        await replica.stop()


async def trickle(gw: ServedGateway, statuses: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            answer = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            statuses.append(answer.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        await asyncio.sleep(0.01)


async def test_a_scheduled_scale_down_and_up_fails_no_request(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    async with ScriptedUpstream() as second:
        gw = await start_gateway(
            upstreams=[upstream.url, second.url],
            health={"interval": 0.05, "timeout": 1.0},
            hold={"max_wait": 30, "probe_interval": 0.05},
        )
        replicas = StandinReplicas([upstream, second])
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
