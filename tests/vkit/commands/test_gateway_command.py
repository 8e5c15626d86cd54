"""``vkit gateway`` as a process: settings from the environment, ready, serving, stopping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.vllm_standin import ScriptedUpstream
from vkit.commands.gateway import server_parts
from vkit.stack.ports import free_port


@pytest.mark.integration
async def test_vkit_gateway_serves_from_env_settings(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        await serve_and_check(upstream, tmp_path)


async def serve_and_check(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "VKIT_GATEWAY_ADMIN_PORT": str(admin_port),
        "VKIT_GATEWAY_UPSTREAMS": json.dumps([upstream.url]),
        "VKIT_GATEWAY_ALLOW_ANONYMOUS": "true",
        "VKIT_GATEWAY_HEALTH__INTERVAL": "0.2",
        "VKIT_GATEWAY_CAPS__DEFAULT_MAX_TOKENS": "3",
    }
    log = (tmp_path / "gw.log").open("wb")
    argv = [sys.executable, "-m", "vkit", "gateway", "--port", str(port)]
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            async with asyncio.timeout(30):
                while not await ready():
                    assert process.poll() is None, (tmp_path / "gw.log").read_text()
                    await asyncio.sleep(0.1)
            body = {"model": "tiny-llama", "prompt": "hi"}
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 200
            assert upstream.bodies[-1]["max_tokens"] == 3
            assert (await client.get("/metrics")).status_code == 404  # not on the public port
            admin = f"http://127.0.0.1:{admin_port}"
            metrics = (await client.get(f"{admin}/metrics")).text
            assert "vkit_gateway_process_resident_memory_bytes" in metrics
            assert 'key="anonymous",model="tiny-llama",status="200"} 1.0' in metrics
            details = (await client.get(f"{admin}/readyz")).json()
            assert details["upstreams"] == {upstream.url.removeprefix("http://"): True}
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        output = (tmp_path / "gw.log").read_text()
        assert "Traceback" not in output
        assert "event loop uvloop, HTTP parser httptools" in output  # the kit's dependencies
    finally:
        process.kill()
        process.wait(timeout=5)
        log.close()


@pytest.mark.integration
def test_an_admin_port_in_use_stops_the_gateway_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "VKIT_GATEWAY_ALLOW_ANONYMOUS": "true",
            "VKIT_GATEWAY_ADMIN_PORT": str(taken.getsockname()[1]),
        }
        argv = [sys.executable, "-m", "vkit", "gateway", "--port", str(free_port())]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "address already in use" in done.stderr.lower()


def test_the_fast_loop_and_parser_are_asked_for_by_name_and_their_absence_is_said() -> None:
    """uvicorn's "auto" falls back without a word; the gateway names what it runs."""
    fast = server_parts(lambda name: True)
    assert (fast.loop, fast.http) == ("uvloop", "httptools")
    assert fast.describe() == "vkit gateway: event loop uvloop, HTTP parser httptools"
    for missing in ("uvloop", "httptools"):
        slow = server_parts(lambda name, missing=missing: name != missing)
        assert {slow.loop, slow.http} & {"asyncio", "h11"}
        assert "pip install uvloop httptools" in slow.describe()
